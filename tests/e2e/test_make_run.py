"""`make run` as a newcomer runs it: cluster, migrations, cron, shim; a test event posted twice."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile

import httpx
import pytest

from tests.pg import ROOT, env_with, one, wait_until_up
from tests.shim.server import free_port


@pytest.fixture
def run_env():
    base = tempfile.mkdtemp(prefix="booking-run-")  # under /tmp, reachable by 'postgres' when root
    state = tempfile.mkdtemp(prefix="booking-state-")
    env = env_with(
        PG_BASE=base, PGPORT=str(free_port()), PORT=str(free_port()), RUN_STATE_DIR=state,
    )
    try:
        yield env
    finally:
        subprocess.run([str(ROOT / "scripts" / "cluster.sh"), "stop"], env=env, cwd=ROOT, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def test_make_run_serves_and_a_test_event_posted_twice_is_stored_once(run_env):
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"PORT={run_env['PORT']}"], cwd=ROOT, env=run_env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    base = f"http://127.0.0.1:{run_env['PORT']}"
    output = []
    try:
        try:
            wait_until_up(lambda: httpx.get(base + "/healthz", timeout=1).status_code == 200, proc, "make run",
                          seconds=180, interval=0.2, not_yet=(httpx.TransportError,))
        except RuntimeError as exc:
            raise AssertionError(f"{exc}:\n{proc.stdout.read() if proc.poll() is not None else ''}") from None

        send = [str(ROOT / "scripts" / "send-test-event.sh"), "evt_make_run_twice"]
        env = dict(run_env, SHIM_URL=base)
        first = subprocess.run(send, env=env, capture_output=True, text=True, check=True).stdout
        second = subprocess.run(send, env=env, capture_output=True, text=True, check=True).stdout
        assert '"outcome":"ignored"' in first
        assert '"outcome":"duplicate"' in second

        url = subprocess.run([str(ROOT / "scripts" / "cluster.sh"), "url"], env=run_env, capture_output=True,
                             text=True, check=True).stdout.strip()
        assert one(url, "SELECT count(*) FROM ops.stripe_events WHERE event_id = 'evt_make_run_twice'") == 1
        assert one(url, "SELECT count(*) FROM cron.job WHERE jobname LIKE 'booking-%'") >= 1
        ready = httpx.get(base + "/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["status"] == "ok"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        output.append(out)
    text = "".join(output)
    assert "booking-core is running." in text
    assert "scripts/send-test-event.sh" in text
    assert "whsec_" not in text, "the webhook secret was printed"
