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
from tests.bench.common import bench_cluster, make_bookings, payment_event, table
from tests.pg import connect
from tests.shim.server import shim
from tests.stripe_events import encode, sign

SECRET = "whsec_bench_0123456789abcdef"
WARM_UP = 2000  # webhooks sent and then ANALYZEd before measuring
WRK_SCRIPT = Path(__file__).with_name("wrk_requests.lua")


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
    with bench_cluster() as admin_url:
        with connect(admin_url) as conn:
            conn.execute("CREATE ROLE bench_shim LOGIN")
            conn.execute("GRANT booking_shim TO bench_shim")
            bookings = make_bookings(conn, int(args.bookings) + WARM_UP)
        print(f"{len(bookings):,} bookings made in {time.perf_counter() - started:.0f} s", flush=True)
        app_url = admin_url.replace("postgres@", "bench_shim@")
        bodies = [encode(payment_event(i, b)) for i, b in enumerate(bookings)]
        pool_env = {"DB_POOL_MAX_SIZE": str(args.pool)}
        with shim(app_url, SECRET, extra_env=pool_env, command=BARE_APP_COMMAND) as base:
            bare = wrk(base + SELECT1_PATH, args.seconds, args.concurrency)
        with shim(app_url, SECRET, extra_env=pool_env) as base:
            # Steady state, as in production after autovacuum's first pass: the event and
            # ledger tables hold rows and have statistics. Measured on a fresh install the
            # generic plans would be made on empty tables and scan them whole until then.
            with signed_requests(bodies[:WARM_UP]) as warm_up_file:
                warm_up = wrk(base + "/webhooks/stripe", 60, args.concurrency, warm_up_file)
            assert warm_up["sent"] == WARM_UP and warm_up["non_2xx"] == 0, warm_up
            with connect(admin_url) as conn:
                conn.execute("ANALYZE")
            with signed_requests(bodies[WARM_UP:]) as hooks_file:
                print("webhook phase", flush=True)
                hooks = wrk(base + "/webhooks/stripe", args.seconds, args.concurrency, hooks_file)
        with connect(admin_url) as conn:
            confirmed = conn.execute("SELECT count(*) FROM booking.bookings WHERE status = 'confirmed'").fetchone()[0]
            imbalances = conn.execute("SELECT count(*) FROM ops.ledger_imbalances").fetchone()[0]
            # Rows written by one transaction share its xmin: how many events went together.
            events, transactions = conn.execute(
                "SELECT count(*), count(DISTINCT xmin::text) FROM stripe.events").fetchone()
    table(f"one uvicorn worker, wrk with {args.concurrency} connections, {args.seconds} s per run, pool of {args.pool}, "
          f"group commit: {os.environ.get('WEBHOOK_BATCH_CONCURRENCY', Settings.webhook_batch_concurrency)} transactions of events at a time "
          "(target: webhooks at least 50% of the bare endpoint)",
          ["endpoint", "requests/s", "p99 ms", "non-2xx", "socket errors"],
          [[name, f"{r['rps']:,.0f}", f"{r['p99_ms']:.1f}", r["non_2xx"], r["errors"]]
           for name, r in ((f"GET {SELECT1_PATH} (bare app: SELECT 1 through the pool)", bare),
                           ("POST /webhooks/stripe (verify, store, apply)", hooks))])
    print(f"webhooks / bare endpoint: {hooks['rps'] / bare['rps']:.0%}; bookings confirmed: {confirmed:,} "
          f"({WARM_UP:,} of them in the warm-up); answers 'duplicate': {warm_up['repeats'] + hooks['repeats']}; ledger imbalances: {imbalances}")
    print(f"events per transaction (group commit): {events / transactions:.1f} ({events:,} events, {transactions:,} transactions)")


if __name__ == "__main__":
    main()
