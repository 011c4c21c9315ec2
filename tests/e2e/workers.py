"""python -m pyshim worker as a process, for the tests that run it: one launcher."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.pg import ROOT, env_with

WORKER_COMMAND = [sys.executable, "-m", "pyshim", "worker"]


def start_worker(database_url: str, smtp_url: str | None = None, *, command: list[str] = WORKER_COMMAND,
                 **env: str) -> subprocess.Popen:
    """The worker (or `command`, a test's own worker: tests/e2e/fault_worker.py) taking jobs
    from database_url, polling every 0.2 s unless env says otherwise; its log lines on
    stdout, as text."""
    settings = {"DATABASE_URL": database_url, "WORKER_POLL_S": "0.2", **env}
    if smtp_url is not None:
        settings["SMTP_URL"] = smtp_url
    return subprocess.Popen(command, cwd=ROOT, env=env_with(**settings),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen, timeout: float = 30) -> str:
    """SIGTERM, then SIGKILL after `timeout`; what it wrote."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out
