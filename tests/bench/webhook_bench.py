"""make bench (webhooks): signed Stripe webhooks per second and p99 latency through the
shim (verify, store, apply: each one confirms a booking), beside a bare endpoint doing
SELECT 1 through a pool of the same settings, served the same way (tests/bench/bare_app.py,
one uvicorn worker under pyshim/serve.py), measured in the same run just before.
Deliveries that arrive while others are in the database are stored and applied together,
in one transaction (group commit, pyshim/batching.py); the run prints how many went
together on average.

The load comes from wrk (a C client, one thread): on two cores a Python client took a
third of the CPU from the server it measured. Every webhook carries a new event that
confirms a new booking; none is sent twice.

    .venv/bin/python -m tests.bench.webhook_bench [--seconds N] [--concurrency N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from pyshim.settings import Settings
from tests.bench.bare_app import BARE_APP_COMMAND, SELECT1_PATH
from tests.bench.common import bench_cluster, headline, make_bookings, payment_event, table
from tests.pg import connect
from tests.shim.server import SHIM_COMMAND, shim
from tests.stripe_events import encode, sign

SECRET = "whsec_bench_0123456789abcdef"
WARM_UP = 2000  # webhooks sent and then ANALYZEd before measuring
WRK_SCRIPT = Path(__file__).with_name("wrk_requests.lua")
WORKERS = (1, 2)  # uvicorn worker processes: the figure, and how it scales with a second


def wrk(url: str, seconds: int, concurrency: int, requests_file: str | None = None) -> dict:
    """Runs wrk against url; returns its summary (requests, sent: how many of the file's
    requests went out, repeats: answers "duplicate", seconds, p99_ms, non_2xx, errors)."""
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(WRK_SCRIPT), url]
    if requests_file:
        cmd += ["--", requests_file]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    summary["rps"] = summary["requests"] / summary["seconds"]
    return summary


def settle(base: str, concurrency: int) -> None:
    """Load on GET /healthz before a measured run: the launcher waits for one answer, and
    with --workers 2 the other process may still be importing (it took CPU from the first
    seconds of the run it was in)."""
    wrk(base + "/healthz", 3, concurrency)


@contextmanager
def signed_requests(bodies: list[bytes]):
    """A file of "<Stripe-Signature>\t<body>" lines for wrk_requests.lua, signed now (one
    timestamp, well inside the 300 s tolerance)."""
    with tempfile.NamedTemporaryFile("w", suffix=".tsv") as f:
        for body in bodies:
            f.write(f"{sign(body, SECRET)}\t{body.decode()}\n")
        f.flush()
        yield f.name


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pool", type=int, default=16, help="the shim's database pool size")
    parser.add_argument("--bookings", type=int, default=0,
                        help="events to have ready (default: 6,000 per second measured, more than can be sent)")
    args = parser.parse_args()
    args.bookings = args.bookings or 6000 * args.seconds
    started = time.perf_counter()
    runs = {}
    with bench_cluster() as admin_url:
        with connect(admin_url) as conn:
            conn.execute("CREATE ROLE bench_shim LOGIN")
            conn.execute("GRANT booking_shim TO bench_shim")
            bookings = make_bookings(conn, WARM_UP + len(WORKERS) * int(args.bookings))
        print(f"{len(bookings):,} bookings made in {time.perf_counter() - started:.0f} s", flush=True)
        app_url = admin_url.replace("postgres@", "bench_shim@")
        bodies = [encode(payment_event(i, b)) for i, b in enumerate(bookings)]
        pool_env = {"DB_POOL_MAX_SIZE": str(args.pool)}
        with shim(app_url, SECRET, extra_env=pool_env) as base:
            # Steady state, as in production after autovacuum's first pass: the event and
            # ledger tables hold rows and have statistics. Measured on a fresh install the
            # generic plans would be made on empty tables and scan them whole until then.
            with signed_requests(bodies[:WARM_UP]) as warm_up_file:
                warm_up = wrk(base + "/webhooks/stripe", 60, args.concurrency, warm_up_file)
            assert warm_up["sent"] == WARM_UP and warm_up["non_2xx"] == 0, warm_up
        with connect(admin_url) as conn:
            conn.execute("ANALYZE")
        # The same server settings for both sides of each ratio: uvicorn --workers n (each
        # worker process its own pool of args.pool and its own group commit).
        for k, n in enumerate(WORKERS):
            workers = ["--workers", str(n)]
            with shim(app_url, SECRET, extra_env=pool_env, command=[*BARE_APP_COMMAND, *workers]) as base:
                settle(base, args.concurrency)
                bare = wrk(base + SELECT1_PATH, args.seconds, args.concurrency)
            mine = bodies[WARM_UP + k * args.bookings:WARM_UP + (k + 1) * args.bookings]
            with shim(app_url, SECRET, extra_env=pool_env, command=[*SHIM_COMMAND, *workers]) as base:
                settle(base, args.concurrency)
                with signed_requests(mine) as hooks_file:
                    print(f"webhook phase, {n} uvicorn worker(s)", flush=True)
                    hooks = wrk(base + "/webhooks/stripe", args.seconds, args.concurrency, hooks_file)
            runs[n] = (bare, hooks)
        with connect(admin_url) as conn:
            confirmed = conn.execute("SELECT count(*) FROM booking.bookings WHERE status = 'confirmed'").fetchone()[0]
            # Rows written by one transaction share its xmin: how many events went together.
            events, transactions = conn.execute(
                "SELECT count(*), count(DISTINCT xmin::text) FROM stripe.events").fetchone()
    table(f"wrk with {args.concurrency} connections, {args.seconds} s per run, a pool of {args.pool} per uvicorn worker, "
          f"group commit: {os.environ.get('WEBHOOK_BATCH_CONCURRENCY', Settings.webhook_batch_concurrency)} transactions of events at a time "
          "(targets at one worker: webhooks at least 70% of the bare endpoint, p99 under 50 ms)",
          ["uvicorn workers", "endpoint", "requests/s", "p99 ms", "non-2xx", "socket errors", "webhooks / bare"],
          [[n, name, f"{r['rps']:,.0f}", f"{r['p99_ms']:.1f}", r["non_2xx"], r["errors"],
            f"{hooks['rps'] / bare['rps']:.0%}" if r is hooks else ""]
           for n, (bare, hooks) in runs.items()
           for name, r in ((f"GET {SELECT1_PATH} (bare app: SELECT 1 through the pool)", bare),
                           ("POST /webhooks/stripe (verify, store, apply)", hooks))])
    bare, hooks = runs[1]
    headline("webhooks / bare endpoint, 1 uvicorn worker", hooks["rps"] / bare["rps"], 0.70, "%")
    headline("webhook p99, 1 uvicorn worker", hooks["p99_ms"], 50, " ms", lower_is_better=True)
    print(f"a second uvicorn worker: webhooks x{runs[2][1]['rps'] / hooks['rps']:.2f}, bare x{runs[2][0]['rps'] / bare['rps']:.2f}")
    print(f"bookings confirmed: {confirmed:,} ({WARM_UP:,} of them in the warm-up); "
          f"answers 'duplicate': {warm_up['repeats'] + sum(h['repeats'] for _, h in runs.values())}")
    print(f"events per transaction (group commit): {events / transactions:.1f} ({events:,} events, {transactions:,} transactions)")
    if any(h["non_2xx"] for _, h in runs.values()):
        raise SystemExit("some webhooks were not answered 2xx")

if __name__ == "__main__":
    main()
