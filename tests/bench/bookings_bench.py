"""make bench (bookings): api.create_booking with and without an idempotency key, and the
latency of replaying a stored answer.

    .venv/bin/python -m tests.bench.bookings_bench [--seconds N]

Each pgbench transaction places a hold and books it, so the key's cost is also shown on
create_booking alone: per-call time of (hold + booking) minus per-call time of the hold.
"""

from __future__ import annotations

import argparse

from tests.bench.common import bench_cluster, headline, make_bookings, pgbench_run, table
from tests.pg import connect

HOLD_ONLY = """SELECT hold_id FROM api.place_hold(:inv, 1, 'bench');
"""
BOOK_WITHOUT_KEY = """SELECT hold_id AS h FROM api.place_hold(:inv, 1, 'bench') \\gset
SELECT api.create_booking(NULL, 'bench', ARRAY[:h::uuid]);
"""
BOOK_WITH_KEY = """SELECT hold_id AS h FROM api.place_hold(:inv, 1, 'bench') \\gset
SELECT api.create_booking(gen_random_uuid()::text, 'bench', ARRAY[:h::uuid]);
"""
REPLAY = """SELECT api.create_booking('replayed-key', 'bench', ARRAY[:h::uuid]);
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with bench_cluster() as url:
        with connect(url) as conn:
            inventory = str(conn.execute(
                "SELECT api.create_inventory('bench-bookings', 10000000, 5000, 'usd')").fetchone()[0])
            hold = str(conn.execute("SELECT hold_id FROM api.place_hold(%s, 1, 'bench')", (inventory,)).fetchone()[0])
            conn.execute("SELECT api.create_booking('replayed-key', 'bench', ARRAY[%s::uuid])", (hold,))
            # Steady state, as the webhook bench has it: the tables hold rows and have
            # statistics (autovacuum's first ANALYZE). Started on a one-row bookings table,
            # each pgbench session kept a Seq Scan plan for the history row's foreign-key
            # check while the table grew under it, and the run measured mostly that
            # (docs/PROFILING.md, finding 7: 14% and 22% of hold alone, 48% with the plans good).
            make_bookings(conn, 5000)
            conn.execute("ANALYZE")
        defines = {"inv": inventory}
        c = args.clients
        hold_tps, _ = pgbench_run(url, HOLD_ONLY, c, args.seconds, defines=defines)
        plain_tps, _ = pgbench_run(url, BOOK_WITHOUT_KEY, c, args.seconds, defines=defines)
        keyed_tps, _ = pgbench_run(url, BOOK_WITH_KEY, c, args.seconds, defines=defines)
        replay_tps, replay_ms = pgbench_run(url, REPLAY, 1, args.seconds, defines={"h": hold})

        # Per-call busy time across the c clients, in microseconds.
        def us(tps):
            return c / tps * 1e6

        plain_booking_us = us(plain_tps) - us(hold_tps)
        keyed_booking_us = us(keyed_tps) - us(hold_tps)
        table(f"api.create_booking, {c} clients, {args.seconds} s per run (target: the key costs at most 30%)",
              ["run", "tps", "create_booking us/call (derived)"],
              [["place_hold only", f"{hold_tps:,.0f}", "-"],
               ["place_hold + create_booking, no key", f"{plain_tps:,.0f}", f"{plain_booking_us:,.0f}"],
               ["place_hold + create_booking, with key", f"{keyed_tps:,.0f}", f"{keyed_booking_us:,.0f}"]])
        headline(f"place_hold + create_booking (with a key) / place_hold alone, {c} clients", keyed_tps / hold_tps, 0.50, "%")
        print(f"with a key / without: {keyed_tps / plain_tps:.0%} of the throughput; "
              f"create_booking alone costs {keyed_booking_us / plain_booking_us - 1:+.0%} with the key")
        table("replaying a stored answer (same key, same request), 1 client",
              ["calls/s", "mean latency ms"], [[f"{replay_tps:,.0f}", f"{replay_ms:.3f}"]])


if __name__ == "__main__":
    main()
