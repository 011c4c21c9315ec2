"""make bench (console): GET /ops and GET /metrics on a database with a million holds and
100,000 errors.

    .venv/bin/python -m tests.bench.console_bench [--runs N]

The data (30 days of it, made with generate_series as superuser, triggers off):
1,000,000 holds placed evenly over 30 days on 200 inventories, of which the last 15
minutes' are live, plus an on-sale burst of 20,000 live holds and 500 dead ones not yet
swept; 100,000 errors in 2,000 groups (300 open); 100,000 bookings with 200,000 history
rows and 50,000 charges; 200,000 Stripe events (70 failing or dead); 100,000 done jobs;
20,000 idempotency keys. Then VACUUM ANALYZE, as autovacuum would.

Printed: the median time of each panel's query as the ops login (over --runs runs), with
the V0012 indexes and without them, then the median of the whole GET /ops and of an
uncached GET /metrics through a real shim (uvicorn, one worker, on the same two cores).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

import httpx

from pyshim.console import PANELS
from tests.bench.common import bench_cluster, headline, table
from tests.pg import LOGINS, connect, url_for
from tests.shim.server import shim

TOKEN = "bench-ops-token-" + "t" * 32
# What V0012 added; the "without" column drops them and puts back the index it replaced.
V0012 = ["booking.holds_created_at_idx", "booking.holds_open_inventory_deadline_qty_idx",
         "booking.bookings_created_at_idx", "booking.booking_history_stripe_at_idx",
         "ledger.transactions_posted_at_idx", "jobs.jobs_alerts_created_idx", "jobs.jobs_created_idx",
         "jobs.jobs_dead_idx", "stripe.events_failing_idx"]
V0003_INDEX = ("CREATE INDEX holds_open_inventory_deadline_idx ON booking.holds (inventory_id, expires_at)"
               " WHERE status IN ('live', 'booked')")

DATA = [
    ("inventories", """
        SELECT api.create_inventory('bench-inv-' || g, 100000, 2500, 'usd', '15 minutes', '10 minutes', 1)
        FROM generate_series(1, 200) AS g"""),
    ("holds, 30 days", """
        INSERT INTO booking.holds (inventory_id, bucket_no, quantity, holder, status, created_at, expires_at, ended_at,
                                   booking_id)
        SELECT inv.ids[1 + g % 200], 0, 1 + g % 3, 'holder-' || (g % 50000),
               CASE WHEN t > now() - interval '15 minutes' THEN 'live'
                    WHEN g % 5 < 3 THEN 'expired' ELSE 'converted' END,
               t, t + interval '15 minutes',
               CASE WHEN t > now() - interval '15 minutes' THEN NULL ELSE t + interval '15 minutes' END, NULL
        FROM (SELECT array_agg(inventory_id ORDER BY sku) AS ids FROM booking.inventory) AS inv,
             generate_series(1, 1000000 - 20500) AS g,
             LATERAL (SELECT now() - interval '30 days' * (1 - g / 1000000.0) AS t) AS x"""),
    ("holds, on-sale burst", """
        INSERT INTO booking.holds (inventory_id, bucket_no, quantity, holder, status, created_at, expires_at)
        SELECT inv.ids[1 + g % 200], 0, 1, 'burst-' || g, 'live',
               now() - interval '10 minutes' * random(), now() + interval '5 minutes' + interval '10 minutes' * random()
        FROM (SELECT array_agg(inventory_id ORDER BY sku) AS ids FROM booking.inventory) AS inv,
             generate_series(1, 20000) AS g"""),
    ("holds, dead unswept", """
        INSERT INTO booking.holds (inventory_id, bucket_no, quantity, holder, status, created_at, expires_at)
        SELECT inv.ids[1 + g % 200], 0, 1, 'late-' || g, 'live', now() - interval '17 minutes',
               now() - interval '2 minutes'
        FROM (SELECT array_agg(inventory_id ORDER BY sku) AS ids FROM booking.inventory) AS inv,
             generate_series(1, 500) AS g"""),
    ("error groups", """
        INSERT INTO core.error_groups (fingerprint, severity, source, message, count, first_seen, last_seen,
                                       resolved_at, resolved_by)
        SELECT 'fp-' || g, (ARRAY['debug', 'info', 'warning', 'error', 'critical'])[1 + g % 5], 'source-' || (g % 7),
               'error message number ' || g, 50, now() - interval '30 days', now() - interval '1 minute' * g,
               CASE WHEN g > 300 THEN now() - interval '1 minute' * g END, CASE WHEN g > 300 THEN 'bench' END
        FROM generate_series(1, 2000) AS g"""),
    ("errors", """
        INSERT INTO core.errors (fingerprint, severity, source, message, detail, at)
        SELECT 'fp-' || (1 + g % 2000), 'error', 'source', 'error message', 'a detail of some length', 
               now() - interval '30 days' * (1 - g / 100000.0)
        FROM generate_series(1, 100000) AS g"""),
    ("bookings", """
        INSERT INTO booking.bookings (holder, request_fingerprint, status, amount, currency, expires_at, response,
                                      payment_intent_id, created_at)
        SELECT 'holder-' || g, 'f', CASE WHEN g % 2 = 0 THEN 'confirmed' ELSE 'expired' END, 2500, 'usd',
               t + interval '15 minutes', '{}', CASE WHEN g % 2 = 0 THEN 'pi_bench_' || g END, t
        FROM generate_series(1, 100000) AS g,
             LATERAL (SELECT now() - interval '30 days' * (1 - g / 100000.0) AS t) AS x"""),
    ("booking history", """
        INSERT INTO booking.booking_history (booking_id, event, from_status, to_status, at, stripe_event_id)
        SELECT b.booking_id, 'created', NULL, 'pending_payment', b.created_at, NULL FROM booking.bookings AS b
        UNION ALL
        SELECT b.booking_id, CASE WHEN b.status = 'confirmed' THEN 'payment_succeeded' ELSE 'expire' END,
               'pending_payment', b.status, b.created_at + interval '2 minutes',
               CASE WHEN b.status = 'confirmed' THEN 'evt_' || b.payment_intent_id END
        FROM booking.bookings AS b"""),
    ("charges", """
        INSERT INTO ledger.transactions (kind, stripe_object_id, booking_id, payment_intent_id, currency, amount,
                                         posted_at)
        SELECT 'charge', b.payment_intent_id, b.booking_id, b.payment_intent_id, 'usd', 2500,
               b.created_at + interval '2 minutes'
        FROM booking.bookings AS b WHERE b.payment_intent_id IS NOT NULL"""),
    ("stripe events", """
        INSERT INTO stripe.events (event_id, type, payload, status, attempts, last_error, received_at, processed_at,
                                   next_attempt_at)
        SELECT 'evt_bench_' || g, 'payment_intent.succeeded', '{"id": "x"}',
               CASE WHEN g % 4000 = 0 THEN 'dead' WHEN g % 4000 = 1 THEN 'failed' ELSE 'processed' END,
               1, CASE WHEN g % 4000 IN (0, 1) THEN 'an error' END, t, t,
               CASE WHEN g % 4000 = 1 THEN now() + interval '1 minute' END
        FROM generate_series(1, 200000) AS g,
             LATERAL (SELECT now() - interval '30 days' * (1 - g / 200000.0) AS t) AS x"""),
    ("jobs", """
        INSERT INTO jobs.jobs (kind, payload, status, created_at, finished_at, run_at)
        SELECT CASE WHEN g % 1000 = 0 THEN 'alert.notify' ELSE 'email.booking_confirmed' END, '{}',
               CASE WHEN g % 20000 = 0 THEN 'dead' ELSE 'done' END, t, t + interval '2 seconds', t
        FROM generate_series(1, 100000) AS g,
             LATERAL (SELECT now() - interval '30 days' * (1 - g / 100000.0) AS t) AS x"""),
    ("idempotency keys", """
        INSERT INTO core.idempotency_keys (scope, principal, key, fingerprint, status, response, created_at, expires_at)
        SELECT 'payment_intent', 'p', 'k' || g, 'f', 'completed', '{}', now() - interval '1 day' * random(),
               now() + interval '1 day'
        FROM generate_series(1, 20000) AS g"""),
]


def build(url: str) -> None:
    with connect(url) as conn:
        for login, role in LOGINS.items():
            conn.execute(f"CREATE ROLE {login} LOGIN")
            conn.execute(f"GRANT {role} TO {login}")
        conn.execute("SET session_replication_role = replica")
        for name, sql in DATA:
            started = time.perf_counter()
            conn.execute(sql)
            print(f"  {name}: {time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        print(f"  vacuum analyze: {time.perf_counter() - started:.1f} s", flush=True)
        print("  " + ", ".join(f"{t}: {n:,}" for t, n in conn.execute(
            "SELECT 'holds', count(*) FROM booking.holds UNION ALL SELECT 'errors', count(*) FROM core.errors"
            " UNION ALL SELECT 'live holds', count(*) FROM booking.holds WHERE status = 'live'").fetchall()))


def median_ms(fn, runs: int) -> float:
    fn()  # warm: plans and caches
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def time_panels(ops_url: str, runs: int) -> dict[str, float]:
    out = {}
    with connect(ops_url) as conn:
        # As the console's transaction does (pyshim/console.py: read_panels).
        conn.execute("SET jit = off")
        conn.execute("SET max_parallel_workers_per_gather = 0")
        out["SELECT 1 (baseline)"] = median_ms(lambda: conn.execute("SELECT 1").fetchall(), runs)
        for name, sql in {**PANELS, "metrics_gauges": "SELECT * FROM ops.metrics_gauges()"}.items():
            out[name] = median_ms(lambda sql=sql: conn.execute(sql).fetchall(), runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    # The million holds and 100,000 errors are planted with INSERTs (the api would take an
    # hour), charges without their ledger lines among them: the invariant views are not
    # empty here by construction, and nothing this bench times writes anything.
    with bench_cluster(check_invariants_at_end=False) as url:
        print("building the data:", flush=True)
        build(url)
        ops_url = url_for(url, "bench", "ops_login")
        with_indexes = time_panels(ops_url, args.runs)
        env = {"OPS_TOKEN": TOKEN, "OPS_DATABASE_URL": ops_url, "METRICS_DB_CACHE_S": "0"}
        with shim(url_for(url, "bench", "shim_login"), "whsec_bench", extra_env=env) as base:
            client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
            page = median_ms(lambda: client.get("/ops").raise_for_status(), args.runs)
            # The page says how long its reads took: the rest is rendering and HTTP.
            reads = statistics.median(
                float(re.search(r"read in (\d+) ms", client.get("/ops").text).group(1)) for _ in range(args.runs))
            scrape = median_ms(lambda: client.get("/metrics").raise_for_status(), args.runs)
            size = len(client.get("/ops").content)
        with connect(url) as conn:
            for index in V0012:
                conn.execute(f"DROP INDEX {index}")
            conn.execute(V0003_INDEX)
            conn.execute("VACUUM ANALYZE")
        without = time_panels(ops_url, args.runs)
    headline("GET /ops, a million holds and 100,000 errors (median)", page, 200, " ms", lower_is_better=True)
    table(f"Console panels, median of {args.runs} runs as ops_login (ms)",
          ["panel", "with V0012", "without V0012"],
          [[name, f"{with_indexes[name]:.1f}", f"{without[name]:.1f}"] for name in with_indexes]
          + [["sum of the panels", f"{sum(v for k, v in with_indexes.items() if k in PANELS):.1f}",
              f"{sum(v for k, v in without.items() if k in PANELS):.1f}"]])
    table(f"Through the shim, median of {args.runs} requests (ms)", ["request", "ms"],
          [[f"GET /ops (whole page, {size // 1024} KiB)", f"{page:.1f}"],
           ["  of which the panels' reads (as the page reports)", f"{reads:.1f}"],
           ["GET /metrics (gauges read, no cache)", f"{scrape:.1f}"]])
    print(f"\nload average at the end (1, 5, 15 min): {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
          f" on {os.cpu_count()} cores (other work on the machine slows every figure)")


if __name__ == "__main__":
    main()
