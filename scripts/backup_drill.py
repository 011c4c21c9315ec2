"""make backup-drill: dump a populated database, restore it into a fresh cluster, and check
that the restored copy holds: invariants, row counts, cron jobs, migration history.

    .venv/bin/python scripts/backup_drill.py [SOURCE_DATABASE_URL]

Without a URL it uses the embedded cluster of `make run` (started if needed), adding a few
bookings and payments first when it holds none. Exit status 0 only when every check passes."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pg import CRON_DB, start_cluster, url_for  # noqa: E402

PGBIN = "/usr/lib/postgresql/15/bin"
COUNTED = ["booking.inventory", "booking.inventory_buckets", "booking.holds", "booking.bookings",
           "booking.booking_history", "ledger.transactions", "ledger.lines", "stripe.events", "jobs.jobs",
           "core.idempotency_keys", "core.error_groups", "migrate.history", "core.cron_jobs"]


def populate(url: str) -> None:
    """A few bookings, paid and not, so that the drill has something to carry."""
    with psycopg.connect(url, autocommit=True) as conn:
        inventory = conn.execute("SELECT api.create_inventory(%s, 50, 2000, 'usd')",
                                 (f"drill-{uuid.uuid4().hex[:8]}",)).fetchone()[0]
        for i in range(5):
            hold = conn.execute("SELECT hold_id FROM api.place_hold(%s, 2, 'drill')", (inventory,)).fetchone()[0]
            booking = conn.execute("SELECT api.create_booking(%s, 'drill', ARRAY[%s::uuid])",
                                   (uuid.uuid4().hex, hold)).fetchone()[0]
            if i % 2 == 0:
                event = {"id": f"evt_drill_{uuid.uuid4().hex}", "object": "event", "type": "payment_intent.succeeded",
                         "livemode": False, "data": {"object": {
                             "id": f"pi_drill_{uuid.uuid4().hex[:10]}", "object": "payment_intent",
                             "amount": booking["amount"], "currency": "usd",
                             "metadata": {"booking_id": booking["booking_id"]}}}}
                conn.execute("SELECT api.ingest_stripe_event(%s::jsonb)", (json.dumps(event),))


def facts(url: str) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        out = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COUNTED}
        out["ops.ledger_imbalances"] = conn.execute("SELECT count(*) FROM ops.ledger_imbalances").fetchone()[0]
        out["ops.oversold_inventory"] = conn.execute("SELECT count(*) FROM ops.oversold_inventory").fetchone()[0]
        has_cron = conn.execute("SELECT to_regnamespace('cron') IS NOT NULL").fetchone()[0]
        out["cron jobs"] = sorted(r[0] for r in conn.execute(
            "SELECT jobname FROM cron.job WHERE jobname LIKE 'booking-%'").fetchall()) if has_cron else []
        # Per account (per currency the balances always sum to zero: double entry).
        out["ledger balances"] = [list(r) for r in conn.execute(
            "SELECT account, currency, balance FROM ops.ledger_balances ORDER BY 1, 2").fetchall()]
    return out


def drill(source_url: str, workdir: Path) -> dict:
    """Dumps source_url, restores it into a new cluster; returns the checks and the facts."""
    dump = workdir / "booking.dump"
    roles = workdir / "roles.sql"
    subprocess.run([f"{PGBIN}/pg_dump", "-Fc", "-f", str(dump), source_url], check=True)
    with open(roles, "w") as f:
        subprocess.run([f"{PGBIN}/pg_dumpall", "--roles-only", "-d", source_url], check=True, stdout=f)
    before = facts(source_url)
    target = start_cluster(fsync=False)
    try:
        # Into the database pg_cron runs in, so that its jobs come back with it.
        target_url = url_for(target.url(), CRON_DB)
        subprocess.run(["psql", "-X", "-q", "-d", url_for(target.url(), "postgres"), "-f", str(roles)],
                       check=True, capture_output=True)
        with psycopg.connect(target_url, autocommit=True) as conn:
            conn.execute("DROP EXTENSION IF EXISTS pg_cron")
        restore = subprocess.run([f"{PGBIN}/pg_restore", "--exit-on-error", "-d", target_url, str(dump)],
                                 capture_output=True, text=True)
        if restore.returncode != 0:
            raise RuntimeError(f"pg_restore failed: {restore.stderr[-2000:]}")
        after = facts(target_url)
        with psycopg.connect(target_url, autocommit=True) as conn:
            health = conn.execute("SELECT api.health() ->> 'status'").fetchone()[0]
    finally:
        target.stop()
    checks = {
        "ledger balanced (ops.ledger_imbalances empty)": after["ops.ledger_imbalances"] == 0,
        "nothing oversold (ops.oversold_inventory empty)": after["ops.oversold_inventory"] == 0,
        "row counts equal": all(after[t] == before[t] for t in COUNTED),
        "ledger balances equal": after["ledger balances"] == before["ledger balances"] != [],
        "cron jobs present": after["cron jobs"] == before["cron jobs"] and len(after["cron jobs"]) > 0,
        "api.health() answers": health in ("ok", "degraded"),
    }
    return {"checks": checks, "before": before, "after": after, "dump_bytes": dump.stat().st_size}


def main() -> int:
    if len(sys.argv) > 1:
        source = sys.argv[1]
    else:
        subprocess.run([str(ROOT / "scripts/cluster.sh"), "start"], check=True)
        source = subprocess.run([str(ROOT / "scripts/cluster.sh"), "url"], capture_output=True, text=True,
                                check=True).stdout.strip()
        subprocess.run([str(ROOT / "sql/migrate.sh"), source], check=True)
        with psycopg.connect(source, autocommit=True) as conn:
            if conn.execute("SELECT count(*) FROM booking.bookings").fetchone()[0] == 0:
                populate(source)
    with tempfile.TemporaryDirectory() as tmp:
        result = drill(source, Path(tmp))
    print(f"backup drill: dumped {result['dump_bytes']:,} bytes from {source.rsplit('@', 1)[-1]}, "
          "restored into a fresh cluster")
    for table in COUNTED:
        print(f"  {table:32} {result['before'][table]:>8} -> {result['after'][table]:>8}")
    for name, ok in result["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
