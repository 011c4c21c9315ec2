"""make bench (webhooks): signed Stripe webhooks per second and p99 latency through the
shim (verify, store, apply: each one confirms a booking), beside a bare endpoint on the
same server and pool doing SELECT 1, measured in the same run.

    .venv/bin/python -m tests.bench.webhook_bench [--seconds N] [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

from tests.bench.common import bench_cluster, table
from tests.pg import connect
from tests.shim.server import shim
from tests.stripe_events import encode, event, payment_intent, sign

SECRET = "whsec_bench_0123456789abcdef"


async def load(url: str, requests, seconds: float, concurrency: int) -> tuple[float, float, int]:
    """Sends requests (an iterator of (method, body, headers)) for up to `seconds` from
    `concurrency` connections; returns (requests per second, p99 ms, errors)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker():
            nonlocal errors
            while time.perf_counter() < deadline:
                try:
                    method, body, headers = next(requests)
                except StopIteration:
                    return
                started = time.perf_counter()
                async with session.request(method, url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else float("nan")
    return len(latencies) / elapsed, p99, errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bookings", type=int, default=12000)
    args = parser.parse_args()
    with bench_cluster() as admin_url:
        with connect(admin_url) as conn:
            conn.execute("CREATE ROLE bench_shim LOGIN")
            conn.execute("GRANT booking_app TO bench_shim")
            inventory = conn.execute("SELECT api.create_inventory('bench-webhooks', 10000000, 2500, 'usd')").fetchone()[0]
            conn.execute("CREATE TEMP TABLE bench_bookings (booking_id text)")
            conn.execute(
                f"""
                DO $$
                BEGIN
                    FOR i IN 1..{int(args.bookings)} LOOP
                        INSERT INTO bench_bookings
                        SELECT api.create_booking(NULL, 'bench', ARRAY[h.hold_id]) ->> 'booking_id'
                        FROM api.place_hold('{inventory}', 1, 'bench') AS h;
                    END LOOP;
                END $$
                """)
            bookings = conn.execute("SELECT booking_id FROM bench_bookings").fetchall()
        app_url = admin_url.replace("postgres@", "bench_shim@")
        bodies = [encode(event("payment_intent.succeeded", payment_intent(f"pi_bench_{i}", b, 2500)))
                  for i, (b,) in enumerate(bookings)]
        with shim(app_url, SECRET, extra_env={"PYSHIM_BENCH_ENDPOINT": "1", "DB_POOL_MAX_SIZE": "16"}) as base:
            def select1():
                while True:
                    yield "GET", None, {}

            def webhooks():
                for body in bodies:  # signed as sent: the timestamp must be fresh
                    yield "POST", body, {"Stripe-Signature": sign(body, SECRET), "Content-Type": "application/json"}

            bare_rps, bare_p99, bare_errors = asyncio.run(load(base + "/bench/select1", select1(), args.seconds, args.concurrency))
            print("webhook phase", flush=True)
            hook_rps, hook_p99, hook_errors = asyncio.run(load(base + "/webhooks/stripe", webhooks(), args.seconds, args.concurrency))
        with connect(admin_url) as conn:
            confirmed = conn.execute("SELECT count(*) FROM booking.bookings WHERE status = 'confirmed'").fetchone()[0]
            imbalances = conn.execute("SELECT count(*) FROM ops.ledger_imbalances").fetchone()[0]
    table(f"one uvicorn worker, {args.concurrency} concurrent connections, {args.seconds} s per run "
          "(target: webhooks at least 50% of the bare endpoint)",
          ["endpoint", "requests/s", "p99 ms", "errors"],
          [["GET /bench/select1 (SELECT 1 through the pool)", f"{bare_rps:,.0f}", f"{bare_p99:.1f}", bare_errors],
           ["POST /webhooks/stripe (verify, store, apply)", f"{hook_rps:,.0f}", f"{hook_p99:.1f}", hook_errors]])
    print(f"webhooks / bare endpoint: {hook_rps / bare_rps:.0%}; bookings confirmed by them: {confirmed:,}; "
          f"ledger imbalances: {imbalances}")


if __name__ == "__main__":
    main()
