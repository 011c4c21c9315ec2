"""Shared by the benchmarks: a durable cluster of its own, pgbench, and a printed table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from urllib.parse import urlparse

from tests.pg import connect, migrate, start_cluster, url_for
from tests.stripe_events import event, payment_intent

PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
BOOKING_AMOUNT = 2500


@contextmanager
def bench_cluster(*, check_invariants_at_end: bool = True):
    """fsync on, default durability: the numbers mean what they would in production.
    check_invariants_at_end=False only for a bench whose data is planted with INSERTs rather
    than made through the api (console_bench), which the invariant views would flag."""
    pg = start_cluster(fsync=True, extra=("-c shared_buffers=512MB", "-c max_wal_size=4GB"))
    try:
        # Not the pg_cron database: a scheduled sweep must not run in the middle of a measurement.
        with connect(url_for(pg.url(), "postgres")) as conn:
            conn.execute("CREATE DATABASE bench")
        url = url_for(pg.url(), "bench")
        migrate(url)
        yield url
        if check_invariants_at_end:
            check_invariants(url)
    finally:
        pg.stop()


INVARIANT_VIEWS = ("ops.oversold_inventory", "ops.ledger_imbalances", "ops.broken_rows")


def check_invariants(url: str) -> None:
    """After every benchmark: what it did left nothing oversold, unbalanced or broken (the
    views an operator reads). A benchmark that breaks them fails instead of printing figures
    that do not count."""
    with connect(url) as conn:
        counts = {v: conn.execute(f"SELECT count(*) FROM {v}").fetchone()[0] for v in INVARIANT_VIEWS}
    print("\ninvariants after the benchmark: " + ", ".join(f"{v} {n} rows" for v, n in counts.items()))
    if any(counts.values()):
        raise SystemExit(f"the benchmark left rows in the invariant views: {counts}")


def headline(figure: str, value: float, goal: float, unit: str, *, lower_is_better: bool = False) -> None:
    """A figure an issue sets a goal for, printed with the goal; with BENCH_SUMMARY set (as
    tests/bench/run_all.py sets it) also appended there, to be shown beside the other run's."""
    met = value <= goal if lower_is_better else value >= goal
    shown = f"{value:.0%}" if unit == "%" else f"{value}{unit}" if isinstance(value, int) else f"{value:.2f}{unit}"
    wanted = f"{'<=' if lower_is_better else '>='} {goal:.0%}" if unit == "%" else \
        f"{'<=' if lower_is_better else '>='} {goal:g}{unit}"
    print(f"headline: {figure}: {shown} (goal {wanted}: {'met' if met else 'MISSED'})")
    if os.environ.get("BENCH_SUMMARY"):
        with open(os.environ["BENCH_SUMMARY"], "a") as f:
            f.write(json.dumps({"figure": figure, "shown": shown, "goal": wanted, "met": met}) + "\n")


def make_bookings(conn, count: int, amount: int = BOOKING_AMOUNT) -> list[str]:
    """count bookings of one unit each, awaiting payment, on one large inventory; their ids."""
    inventory = conn.execute("SELECT api.create_inventory(%s, 10000000, %s, 'usd')",
                             (f"bench-{uuid.uuid4().hex[:8]}", amount)).fetchone()[0]
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS bench_bookings (booking_id text)")
    made = 0
    while made < count:
        chunk = min(2000, count - made)
        # ANALYZE between chunks, as autovacuum would: a plan cached while the tables were
        # empty scans them whole at every call.
        conn.execute("ANALYZE")
        conn.execute(
            f"""
            DO $$
            BEGIN
                FOR i IN 1..{chunk} LOOP
                    INSERT INTO bench_bookings
                    SELECT api.create_booking(NULL, 'bench', ARRAY[h.hold_id]) ->> 'booking_id'
                    FROM api.place_hold('{inventory}', 1, 'bench') AS h;
                END LOOP;
            END $$
            """)
        made += chunk
    return [b for (b,) in conn.execute("DELETE FROM bench_bookings RETURNING booking_id").fetchall()]


def payment_event(i: int, booking_id: str, amount: int = BOOKING_AMOUNT) -> dict:
    """The payment_intent.succeeded event that confirms booking_id (PaymentIntent pi_bench_<i>)."""
    return event("payment_intent.succeeded", payment_intent(f"pi_bench_{i}", booking_id, amount))


def pgbench(url: str, script: str, clients: int, seconds: int, *, defines: dict[str, str] | None = None) -> float:
    """Runs a pgbench custom script; returns transactions per second."""
    return pgbench_run(url, script, clients, seconds, defines=defines)[0]


def pgbench_run(url: str, script: str, clients: int, seconds: int, *,
                defines: dict[str, str] | None = None) -> tuple[float, float]:
    """Runs a pgbench custom script; returns (transactions per second, mean latency in ms)."""
    out = pgbench_output(url, script, clients, seconds, defines=defines)
    return (float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out).group(1)),
            float(re.search(r"latency average = ([0-9.]+) ms", out).group(1)))


def pgbench_output(url: str, script: str, clients: int, seconds: int, *,
                   defines: dict[str, str] | None = None, app: str = "bench") -> str:
    """Runs a pgbench custom script (prepared statements, its sessions named `app` in
    pg_stat_activity); returns what it printed. A failed transaction fails the run."""
    u = urlparse(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        cmd = [PGBENCH, "-n", "-M", "prepared", "-f", path, "-c", str(clients), "-j", str(min(clients, 2)),
               "-T", str(seconds), "-h", u.hostname, "-p", str(u.port), "-U", u.username, u.path.lstrip("/")]
        for key, value in (defines or {}).items():
            cmd += ["-D", f"{key}={value}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=dict(os.environ, PGAPPNAME=app))
        if out.returncode != 0:
            raise RuntimeError(f"pgbench failed: {out.stderr[-2000:]}")
        failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
        if failed and int(failed.group(1)):
            raise RuntimeError(f"pgbench: {failed.group(1)} failed transactions")
        return out.stdout
    finally:
        os.unlink(path)


def table(title: str, header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
