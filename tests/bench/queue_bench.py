"""make bench (queue): no-op jobs claimed and completed per second by python -m pyshim worker's
Worker (lease tokens checked on every completion; the no-op kind is the bench's own,
tests/bench/noop_worker.py) beside procrastinate and pgqueuer draining the
same number of jobs on the same database, in the same run.

    .venv/bin/python -m tests.bench.queue_bench [--jobs N] [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

import psycopg

from tests.bench.common import bench_cluster, headline, table
from tests.bench.noop_worker import NOOP_KIND, allow_noop_kind
from tests.pg import ROOT, connect, env_with


def ours(url: str, jobs: int, concurrency: int) -> float:
    with connect(url) as conn:
        conn.execute("CREATE ROLE bench_worker LOGIN")
        conn.execute("GRANT booking_worker TO bench_worker")
        allow_noop_kind(conn)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.noop_worker"], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env=env_with(DATABASE_URL=url.replace("postgres@", "bench_worker@"),
                     WORKER_CONCURRENCY=str(concurrency), WORKER_POLL_S="0.05", WORKER_POOL_SIZE="16"))
    try:
        time.sleep(2)  # started and idle
        with connect(url) as conn:
            conn.execute("INSERT INTO jobs.jobs (kind, payload) SELECT %s, '{}' FROM generate_series(1, %s)",
                         (NOOP_KIND, jobs))
            started = time.perf_counter()
            while conn.execute("SELECT count(*) FROM jobs.jobs WHERE kind = %s AND status = 'done'",
                               (NOOP_KIND,)).fetchone()[0] < jobs:
                time.sleep(0.05)
            return jobs / (time.perf_counter() - started)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def procrastinate_rate(url: str, jobs: int, concurrency: int) -> float:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop", queue="bench")
    async def noop():
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, jobs, 1000):
            await noop.batch_defer_async(*[{} for _ in range(min(1000, jobs - start))])
        started = time.perf_counter()
        await app.run_worker_async(queues=["bench"], wait=False, concurrency=concurrency,
                                   install_signal_handlers=False)
        return jobs / (time.perf_counter() - started)


async def pgqueuer_rate(url: str, jobs: int, concurrency: int) -> float:
    from pgqueuer import PgQueuer, PsycopgDriver, Queries
    from pgqueuer.domain.types import QueueExecutionMode

    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    driver = PsycopgDriver(conn)
    await Queries(driver).install()
    for start in range(0, jobs, 1000):
        n = min(1000, jobs - start)
        await Queries(driver).enqueue(["noop"] * n, [None] * n, [0] * n)
    pgq = PgQueuer(driver)

    @pgq.entrypoint("noop")
    async def noop(job):
        return None

    started = time.perf_counter()
    await pgq.run(mode=QueueExecutionMode.drain, batch_size=concurrency)
    elapsed = time.perf_counter() - started
    await conn.close()
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with bench_cluster() as url:
        mine = ours(url, args.jobs, args.concurrency)
        proc = asyncio.run(procrastinate_rate(url, args.jobs, args.concurrency))
        pgq = asyncio.run(pgqueuer_rate(url, args.jobs, args.concurrency))
    headline("worker / pgqueuer (lease tokens fenced)", mine / pgq, 2.0, "x")
    table(f"{args.jobs:,} no-op jobs drained on one database, concurrency {args.concurrency} "
          "(target: at least 2x procrastinate and not behind pgqueuer)",
          ["queue", "jobs/s", "ratio to procrastinate"],
          [["python -m pyshim worker (lease tokens fenced)", f"{mine:,.0f}", f"{mine / proc:.2f}x"],
           ["procrastinate", f"{proc:,.0f}", "1.00x"],
           ["pgqueuer", f"{pgq:,.0f}", f"{pgq / proc:.2f}x"]])


if __name__ == "__main__":
    main()
