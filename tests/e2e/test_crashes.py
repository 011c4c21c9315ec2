"""Single-node crashes under webhook load (issue 11): the database crashed and restarted,
the shim killed with SIGKILL, the database down when the shim starts, the shim stopped
with SIGTERM in the middle of a group commit.

The same checks after each (tests/load.py: check): every webhook ever answered 200 is
stored and applied once, every booking is confirmed once with one ledger charge, the
ledger balances, nothing is oversold, no row breaks a rule. Deliveries are resent until
answered 200, as Stripe resends them. These tests crash a cluster of their own, never
the session's.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.load import CrashableCluster, Sender, check, make_load
from tests.shim.server import ShimProcess
from tests.pg import connect, wait_until
from tests.stripe_events import encode, sign

SECRET = "whsec_crashes_0123456789abcdef"
OUTAGE_S = 6  # how long a crashed database stays down before it is started again


@pytest.fixture(scope="module")
def crash_cluster():
    cluster = CrashableCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def post(base: str, evt: dict, timeout: float = 30) -> httpx.Response:
    body = encode(evt)
    return httpx.post(base + "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body, SECRET)},
                      timeout=timeout)


def assert_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "database_unavailable"


@pytest.mark.slow
def test_a_database_crash_mid_load_is_503_then_the_same_shim_serves_again(crash_cluster, tmp_path):
    with crash_cluster.database() as db:
        load = make_load(db, 900)
        shim = ShimProcess(db.shim_url, SECRET, extra_env={"WEBHOOK_BATCH_CONCURRENCY": "2"}, log=tmp_path / "shim.log")
        sender = None
        try:
            sender = Sender(load, shim.base, SECRET)
            assert sender.acknowledged_at_least(300, timeout=30), load.summary()
            down = crash_cluster.crash()
            # While it is down the shim answers, and says why: a request that finds no
            # connection waits for the pool's timeout (5 s), then is 503.
            probes = {}
            probe = load.pending()[-1]
            threads = [threading.Thread(target=lambda: probes.update(webhook=post(shim.base, probe))),
                       threading.Thread(target=lambda: probes.update(ready=httpx.get(shim.base + "/readyz", timeout=30)))]
            for t in threads:
                t.start()
            # The database stays down until both probes are answered (however slow a busy
            # machine makes them) and at least OUTAGE_S: their answers are the outage's.
            for t in threads:
                t.join(timeout=60)
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
            up = crash_cluster.start()
            assert_unavailable(probes["webhook"])
            assert probes["ready"].status_code == 503 and probes["ready"].json()["status"] == "down"
            assert sender.join(timeout=60), load.summary()
            # The same process served before, during and after: no restart of the shim.
            assert shim.alive()
            assert httpx.get(shim.base + "/readyz", timeout=10).status_code == 200
            assert set(load.statuses) <= {200, 503}, load.summary()
            assert load.statuses[503] > 0, load.summary()
            findings = check(db, load)
            assert findings.problems() == {}
            first_ok = load.first_200_since(up)
            print(f"\ndatabase crash: down {up - down:.2f} s (immediate stop to accepting connections); "
                  f"no webhook answered 200 for {first_ok - down:.2f} s, the first {first_ok - up:.2f} s "
                  f"after the database was up; {load.summary()}")
        finally:
            if not crash_cluster.is_up():
                crash_cluster.start()
            if sender is not None:
                sender.join(timeout=0)
            shim.stop()


@pytest.mark.slow
def test_b_shim_killed_mid_load_then_stripe_resends_to_a_new_one(crash_cluster, tmp_path):
    with crash_cluster.database() as db:
        load = make_load(db, 900)
        env = {"WEBHOOK_BATCH_CONCURRENCY": "2"}
        first = ShimProcess(db.shim_url, SECRET, extra_env=env, log=tmp_path / "shim1.log")
        second = None
        sender = None
        try:
            sender = Sender(load, first.base, SECRET)
            assert sender.acknowledged_at_least(300, timeout=30), load.summary()
            first.signal(signal.SIGKILL)
            killed = time.monotonic()
            assert first.wait(10) == -signal.SIGKILL
            # Every delivery answered 200 by the killed process is committed, before any
            # other process had a chance to write it.
            acknowledged_by_first = set(load.acknowledged)
            time.sleep(0.5)  # deliveries meanwhile find nobody listening
            findings = check(db, load, all_delivered=False)
            assert findings.problems() == {}
            # A new process on the same address; the sender resends whatever was not answered 200.
            second = ShimProcess(db.shim_url, SECRET, port=first.port, extra_env=env, log=tmp_path / "shim2.log")
            assert sender.join(timeout=60), load.summary()
            assert load.errors, load.summary()  # some deliveries did find the shim gone
            findings = check(db, load)
            assert findings.problems() == {}
            print(f"\nshim SIGKILL: {len(acknowledged_by_first)} acknowledged before the kill, all committed; "
                  f"not answered 200 for {load.seconds_unavailable(killed):.2f} s; {load.summary()}")
        finally:
            if sender is not None:
                sender.join(timeout=0)
            first.stop()
            if second is not None:
                second.stop()


@pytest.mark.slow
def test_c_database_down_when_the_shim_starts_then_up_without_a_restart(crash_cluster, tmp_path):
    with crash_cluster.database() as db:
        load = make_load(db, 200)
        crash_cluster.crash()
        shim = None
        sender = None
        try:
            shim = ShimProcess(db.shim_url, SECRET, log=tmp_path / "shim.log")
            assert httpx.get(shim.base + "/healthz", timeout=10).status_code == 200
            ready = httpx.get(shim.base + "/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["status"] == "down"
            assert_unavailable(post(shim.base, load.pending()[0]))
            sender = Sender(load, shim.base, SECRET, threads=8)
            # A request waits for a connection for the pool's timeout (5 s), then is 503.
            assert wait_until(lambda: load.statuses[503] >= 8, seconds=20), load.summary()
            assert not load.acknowledged
            up = crash_cluster.start()
            assert sender.join(timeout=60), load.summary()
            assert shim.alive()
            assert httpx.get(shim.base + "/readyz", timeout=10).status_code == 200
            assert set(load.statuses) <= {200, 503}, load.summary()
            findings = check(db, load)
            assert findings.problems() == {}
            first_ok = load.first_200_since(up)
            print(f"\ndatabase down at shim start: first 200 {first_ok - up:.2f} s after the database was up; "
                  f"{load.summary()}")
        finally:
            if not crash_cluster.is_up():
                crash_cluster.start()
            if sender is not None:
                sender.join(timeout=0)
            if shim is not None:
                shim.stop()


def _block_event_inserts(db):
    """A superuser transaction holding a lock that every insert into stripe.events waits
    for: the shim's batches stay in flight until it is released."""
    conn = connect(db.url)
    conn.execute("BEGIN")
    conn.execute("LOCK TABLE stripe.events IN SHARE MODE")
    return conn


def _batches_waiting(db) -> int:
    return db.one("SELECT count(*) FROM pg_catalog.pg_stat_activity "
                  "WHERE application_name = 'pyshim' AND wait_event_type = 'Lock'")


@pytest.mark.slow
@pytest.mark.parametrize("grace", ["finishes", "cut_short"])
def test_d_shim_stopped_during_a_group_commit(crash_cluster, tmp_path, grace):
    """SIGTERM while batches wait in the database. With uvicorn's graceful shutdown longer
    than the wait, the in-flight deliveries are answered 200 and committed; cut short
    (--timeout-graceful-shutdown 1), they are answered an error or their connection is
    closed. Either way none is answered 200 without its commit, and after Stripe's resends
    to a new shim everything is applied once."""
    deliveries = 64
    with crash_cluster.database() as db:
        load = make_load(db, deliveries)
        env = {"WEBHOOK_BATCH_CONCURRENCY": "1", "DB_POOL_MAX_SIZE": "4"}
        shim = ShimProcess(db.shim_url, SECRET, extra_env=env, log=tmp_path / "shim.log",
                           graceful_shutdown_s=30 if grace == "finishes" else 1)
        second = None
        sender = None
        blocker = _block_event_inserts(db)
        try:
            # Each delivery once, all at once: one goes alone and waits for the lock, the
            # others queue behind it and go together as the next batch.
            sender = Sender(load, shim.base, SECRET, threads=deliveries, resend=False)
            assert wait_until(lambda: sender.in_flight == deliveries and _batches_waiting(db) == 1, seconds=20)
            time.sleep(0.5)  # every request has been read by the shim and waits for its batch
            shim.signal(signal.SIGTERM)
            if grace == "finishes":
                time.sleep(1.0)
                assert shim.alive()  # waiting for the requests in flight
            else:
                # Cut short: uvicorn cancels the requests still running, runs the lifespan
                # shutdown and exits, while the batch's statement still waits for the lock.
                assert shim.wait(15) is not None
            blocker.execute("ROLLBACK")
            assert sender.join(timeout=40), load.summary()  # every delivery answered or closed
            # uvicorn re-raises the signal it handled once it has shut down.
            assert shim.wait(20) == -signal.SIGTERM
            findings = check(db, load, all_delivered=False)
            assert findings.problems() == {}  # none answered 200 without its commit
            if grace == "finishes":
                # uvicorn waited for the in-flight requests: every one was answered 200.
                assert load.statuses == {200: deliveries}, load.summary()
            else:
                assert 200 not in load.statuses, load.summary()
            committed = db.one("SELECT count(*) FROM stripe.events")
            print(f"\nSIGTERM during group commit ({grace}): {load.summary()}; {committed} committed "
                  f"(by transactions of the stopped shim)")
            # Stripe resends whatever was not answered 200, to a new shim.
            second = ShimProcess(db.shim_url, SECRET, port=shim.port, extra_env=env, log=tmp_path / "shim2.log")
            assert Sender(load, second.base, SECRET).join(timeout=30), load.summary()
            findings = check(db, load)
            assert findings.problems() == {}
        finally:
            blocker.close()
            if sender is not None:
                sender.join(timeout=0)
            shim.stop()
            if second is not None:
                second.stop()
