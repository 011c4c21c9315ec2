"""make bench (ingest): api.ingest_stripe_event and api.ingest_stripe_events (group commit)
under pgbench, with no shim: what applying a payment costs the database itself.

    .venv/bin/python -m tests.bench.ingest_bench [--seconds N]

Every call confirms new bookings (one payment_intent.succeeded each, none sent twice):
the single call at 16 clients, the batch of 8 at 4 clients. Steady state, as in
production after autovacuum's first pass: 1,000 events applied and ANALYZE first.
"""

from __future__ import annotations

import argparse

from psycopg.types.json import Jsonb

from tests.bench.common import bench_cluster, make_bookings, payment_event, pgbench_run, table
from tests.pg import connect

WARM_UP = 1000
BATCH = 8
SINGLE = """SELECT api.ingest_stripe_event(payload) FROM bench_events WHERE n = (SELECT nextval('single_seq'));
"""
BATCHED = f"""SELECT api.ingest_stripe_events(jsonb_agg(payload ORDER BY n))
FROM bench_events, (SELECT nextval('batch_seq') AS last) AS q
WHERE n > q.last - {BATCH} AND n <= q.last;
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=16, help="pgbench clients for the single call")
    parser.add_argument("--batch-clients", type=int, default=4, help="pgbench clients for the batch of 8")
    args = parser.parse_args()
    # More events than either run can apply (single ~3k/s, batched ~5k/s on two cores).
    single_events, batch_events = 5000 * args.seconds, 8000 * args.seconds
    with bench_cluster() as url:
        with connect(url) as conn:
            bookings = make_bookings(conn, WARM_UP + single_events + batch_events)
            conn.execute("CREATE TABLE bench_events (n int PRIMARY KEY, payload jsonb NOT NULL)")
            with conn.cursor().copy("COPY bench_events (n, payload) FROM STDIN") as copy:
                for n, booking_id in enumerate(bookings, start=1):
                    copy.write_row((n, Jsonb(payment_event(n, booking_id))))
            conn.execute("SELECT api.ingest_stripe_event(payload) FROM bench_events WHERE n <= %s", (WARM_UP,))
            conn.execute(f"CREATE SEQUENCE single_seq START {WARM_UP + 1}")
            conn.execute(f"CREATE SEQUENCE batch_seq START {WARM_UP + single_events + BATCH} INCREMENT {BATCH}")
            conn.execute("VACUUM ANALYZE")
        single_tps, _ = pgbench_run(url, SINGLE, args.clients, args.seconds)
        with connect(url) as conn:
            # (Absent before group commit: the bench also runs on older commits.)
            has_batch = conn.execute("SELECT to_regproc('api.ingest_stripe_events') IS NOT NULL").fetchone()[0]
        batch_tps = pgbench_run(url, BATCHED, args.batch_clients, args.seconds)[0] if has_batch else 0.0
        with connect(url) as conn:
            applied = conn.execute("SELECT count(*) FROM stripe.events").fetchone()[0] - WARM_UP
            confirmed = conn.execute("SELECT count(*) FROM booking.bookings WHERE status = 'confirmed'").fetchone()[0]
            single_used = conn.execute("SELECT last_value - %s FROM single_seq", (WARM_UP,)).fetchone()[0]
            batch_used = conn.execute("SELECT last_value - %s FROM batch_seq", (WARM_UP + single_events,)).fetchone()[0]
    # Neither run may have run out of events (a call past the end applies nothing, fast).
    assert single_used < single_events and batch_used < batch_events, (single_used, batch_used)
    table(f"payments applied by the database, {args.seconds} s per run, fsync on",
          ["call", "clients", "events/s"],
          [["api.ingest_stripe_event (one event, one transaction)", args.clients, f"{single_tps:,.0f}"],
           [f"api.ingest_stripe_events (batch of {BATCH}, one transaction)", args.batch_clients,
            f"{batch_tps * BATCH:,.0f}"]])
    print(f"batched / single: {batch_tps * BATCH / single_tps:.2f}x; events applied: {applied:,}, "
          f"bookings confirmed: {confirmed:,} (warm-up included)")


if __name__ == "__main__":
    main()
