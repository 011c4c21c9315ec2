"""make bench (on-sale fairness): 100,000 visitors entering one waiting room from 32
clients, beside api.place_hold on the same inventory; api.place_hold on an inventory with
a waitlist of 10,000 waiting entries against one without. One run, one cluster.

    .venv/bin/python -m tests.bench.onsale_bench [--seconds N] [--visitors N]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from urllib.parse import urlparse

from tests.bench.common import PGBENCH, bench_cluster, pgbench, table
from tests.pg import connect

CLIENTS = 32
PLACE_HOLD_SCRIPT = """\\set q random(1, 4)
SELECT * FROM api.place_hold(:inv, :q, 'bench');
"""
# One visitor per transaction, each a new one (a repeat would return the same ticket).
ENTER_SCRIPT = """SELECT api.enter_queue(:inv, gen_random_uuid()::text);
"""


def pgbench_count(url: str, script: str, clients: int, per_client: int, defines: dict[str, str]) -> tuple[float, float]:
    """pgbench with a fixed number of transactions per client; (tps, wall seconds)."""
    u = urlparse(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        cmd = [PGBENCH, "-n", "-M", "prepared", "-f", path, "-c", str(clients), "-j", "2", "-t", str(per_client),
               "-h", u.hostname, "-p", str(u.port), "-U", u.username, u.path.lstrip("/")]
        for key, value in defines.items():
            cmd += ["-D", f"{key}={value}"]
        started = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=dict(os.environ, PGAPPNAME="bench"))
        wall = time.perf_counter() - started
        if out.returncode != 0:
            raise RuntimeError(f"pgbench failed: {out.stderr[-2000:]}")
        return float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out.stdout).group(1)), wall
    finally:
        os.unlink(path)


def new_inventory(conn, sku: str) -> str:
    return str(conn.execute("SELECT api.create_inventory(%s, 10000000, 5000, 'usd')", (sku,)).fetchone()[0])


def plant_waitlist(conn, inventory_id: str, entries: int) -> None:
    """entries waiting entries written directly (as joins would leave them when nothing was
    free), keeping the waiting counter equal to the list (ops.broken_rows)."""
    conn.execute("INSERT INTO booking.waitlists (inventory_id, waiting) VALUES (%s, %s)", (inventory_id, entries))
    conn.execute(
        """
        INSERT INTO booking.waitlist_entries (inventory_id, quantity, holder)
        SELECT %s, 100, 'fan' || g FROM generate_series(1, %s) AS g
        """,
        (inventory_id, entries),
    )
    conn.execute("VACUUM ANALYZE booking.waitlist_entries")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--visitors", type=int, default=100_000)
    args = parser.parse_args()
    with bench_cluster() as url:
        with connect(url) as conn:
            room = new_inventory(conn, "bench-room")
            plain = new_inventory(conn, "bench-plain")
            listed = new_inventory(conn, "bench-listed")
            plant_waitlist(conn, listed, 10_000)

        # api.place_hold on the inventory before it gets its queue (a queued one is RB006).
        hold_tps = pgbench(url, PLACE_HOLD_SCRIPT, CLIENTS, args.seconds, defines={"inv": room})
        with connect(url) as conn:
            conn.execute("SELECT api.open_queue(%s, clock_timestamp() + interval '1 hour', 1000)", (room,))
        enter_tps, wall = pgbench_count(url, ENTER_SCRIPT, CLIENTS, args.visitors // CLIENTS, {"inv": room})
        with connect(url) as conn:
            tickets = conn.execute("SELECT count(*) FROM booking.queue_tickets WHERE inventory_id = %s", (room,)).fetchone()[0]
            started = time.perf_counter()
            conn.execute("UPDATE booking.queues SET opens_at = clock_timestamp() WHERE inventory_id = %s",
                         (room,))
            last = conn.execute(
                "SELECT ticket_id FROM booking.queue_tickets WHERE inventory_id = %s ORDER BY pre_rank DESC LIMIT 1",
                (room,)).fetchone()[0]
            position = conn.execute("SELECT \"position\" FROM api.queue_status(%s)", (last,)).fetchone()[0]
            status_ms = (time.perf_counter() - started) * 1000
        table(f"waiting room: {tickets} visitors entering one queue from {CLIENTS} clients ({wall:.1f} s)",
              ["what", "per second"],
              [["api.enter_queue", f"{enter_tps:,.0f}"], ["api.place_hold, same inventory, no queue yet", f"{hold_tps:,.0f}"]])
        print(f"queue_status of the last of {tickets} after opening: position {position}, {status_ms:.1f} ms")

        without = pgbench(url, PLACE_HOLD_SCRIPT, CLIENTS, args.seconds, defines={"inv": plain})
        with_list = pgbench(url, PLACE_HOLD_SCRIPT, CLIENTS, args.seconds, defines={"inv": listed})
        table(f"api.place_hold at {CLIENTS} clients, {args.seconds} s per run (target: the waitlist costs nothing)",
              ["inventory", "holds per second"],
              [["no waitlist", f"{without:,.0f}"], ["10,000 waiting entries", f"{with_list:,.0f}"],
               ["ratio", f"{with_list / without:.2f}x"]])
        with connect(url) as conn:
            broken = conn.execute("SELECT count(*) FROM ops.broken_rows").fetchone()[0]
            oversold = conn.execute("SELECT count(*) FROM ops.oversold_inventory").fetchone()[0]
        print(f"ops.broken_rows: {broken} rows, ops.oversold_inventory: {oversold} rows (both must be 0)")


if __name__ == "__main__":
    main()
