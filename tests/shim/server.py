"""The shim as a real uvicorn process on 127.0.0.1, for tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.pg import ROOT, env_with

# How every test and benchmark starts the shim: the way make run does (pyshim/serve.py).
SHIM_COMMAND = [sys.executable, "-m", "pyshim", "serve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def shim(database_url: str, webhook_secret: str, *, extra_env: dict[str, str] | None = None, log: Path | None = None):
    """The shim's base URL while it runs."""
    with shim_process(database_url, webhook_secret, extra_env=extra_env, log=log) as (base, _):
        yield base


@contextmanager
def shim_process(database_url: str, webhook_secret: str, *, extra_env: dict[str, str] | None = None,
                 log: Path | None = None):
    """(base URL, process) while the shim runs: for tests that check it is the same process."""
    port = free_port()
    env = env_with(DATABASE_URL=database_url, STRIPE_WEBHOOK_SECRET=webhook_secret, **(extra_env or {}))
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [*SHIM_COMMAND, "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log"],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the shim exited with {proc.returncode}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the shim did not start within 30 s")
            time.sleep(0.1)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()
