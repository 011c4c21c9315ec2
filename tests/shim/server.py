"""The shim as a real uvicorn process on 127.0.0.1, for tests: the one launcher every test
and benchmark starts it with."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.pg import ROOT, env_with, wait_until_up

# How every test and benchmark starts the shim: the way make run does (pyshim/serve.py).
SHIM_COMMAND = [sys.executable, "-m", "pyshim", "serve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ShimProcess:
    """The shim as a uvicorn process on 127.0.0.1 whose pid the test keeps, to kill it, to
    check it is still the same process, or to start another one on the same port (the
    address Stripe sends to). Started and answering GET /healthz once constructed.

    command: what serves it (SHIM_COMMAND; a benchmark's own app is served the same way)."""

    def __init__(self, database_url: str, secret: str, *, port: int | None = None,
                 extra_env: dict[str, str] | None = None, log: Path | None = None,
                 graceful_shutdown_s: float | None = None, command: list[str] = SHIM_COMMAND):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [*command, "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"]
        if graceful_shutdown_s is not None:
            cmd += ["--timeout-graceful-shutdown", str(graceful_shutdown_s)]
        env = env_with(DATABASE_URL=database_url, STRIPE_WEBHOOK_SECRET=secret, **(extra_env or {}))
        self._log = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        try:
            wait_until_up(lambda: httpx.get(self.base + "/healthz", timeout=1).status_code == 200, self.proc,
                          "the shim", not_yet=(httpx.TransportError,))
        except BaseException:
            self.stop()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; by pid."""
        if self.alive():
            self.signal(signal.SIGTERM)
            if self.wait(10) is None:
                self.signal(signal.SIGKILL)
                self.wait(10)
        if self._log is not subprocess.DEVNULL and not self._log.closed:
            self._log.close()


@contextmanager
def shim(database_url: str, webhook_secret: str, **options):
    """The shim's base URL while it runs (options: ShimProcess's)."""
    with shim_process(database_url, webhook_secret, **options) as (base, _):
        yield base


@contextmanager
def shim_process(database_url: str, webhook_secret: str, **options):
    """(base URL, process) while the shim runs: for tests that check it is the same process."""
    started = ShimProcess(database_url, webhook_secret, **options)
    try:
        yield started.base, started.proc
    finally:
        started.stop()
