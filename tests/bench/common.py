"""Shared by the benchmarks: a durable cluster of its own, pgbench, and a printed table."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from contextlib import contextmanager
from urllib.parse import urlparse

from tests.pg import connect, migrate, start_cluster, url_for

PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"


@contextmanager
def bench_cluster():
    """fsync on, default durability: the numbers mean what they would in production."""
    pg = start_cluster(fsync=True, extra=("-c shared_buffers=512MB", "-c max_wal_size=4GB"))
    try:
        # Not the pg_cron database: a scheduled sweep must not run in the middle of a measurement.
        with connect(url_for(pg.url(), "postgres")) as conn:
            conn.execute("CREATE DATABASE bench")
        url = url_for(pg.url(), "bench")
        migrate(url)
        yield url
    finally:
        pg.stop()


def pgbench(url: str, script: str, clients: int, seconds: int, *, defines: dict[str, str] | None = None) -> float:
    """Runs a pgbench custom script; returns transactions per second."""
    return pgbench_run(url, script, clients, seconds, defines=defines)[0]


def pgbench_run(url: str, script: str, clients: int, seconds: int, *,
                defines: dict[str, str] | None = None) -> tuple[float, float]:
    """Runs a pgbench custom script; returns (transactions per second, mean latency in ms)."""
    u = urlparse(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        cmd = [PGBENCH, "-n", "-M", "prepared", "-f", path, "-c", str(clients), "-j", str(min(clients, 2)),
               "-T", str(seconds), "-h", u.hostname, "-p", str(u.port), "-U", u.username, u.path.lstrip("/")]
        for key, value in (defines or {}).items():
            cmd += ["-D", f"{key}={value}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=dict(os.environ, PGAPPNAME="bench"))
        if out.returncode != 0:
            raise RuntimeError(f"pgbench failed: {out.stderr[-2000:]}")
        match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out.stdout)
        latency = re.search(r"latency average = ([0-9.]+) ms", out.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
        if failed and int(failed.group(1)):
            raise RuntimeError(f"pgbench: {failed.group(1)} failed transactions")
        return float(match.group(1)), float(latency.group(1))
    finally:
        os.unlink(path)


def table(title: str, header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
