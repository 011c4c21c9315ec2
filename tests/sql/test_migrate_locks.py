"""The migrator and table locks: lock_timeout with retries (real concurrent sessions), and the
locks each applied migration takes on tables that existed before it (what docs/OPERATIONS.md "Lint" lists)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

import psycopg

from tests.pg import SQL, connect, migrate, wait_until

NEW_MIGRATION = "V9990__alter_a_busy_table.sql"
# A new table and a change of a table buyers use: the first must not survive a lock timeout
# of the second (one transaction per file).
NEW_MIGRATION_SQL = """
CREATE TABLE core.lock_test_marker (id int);
ALTER TABLE booking.inventory ADD COLUMN lock_test_note text;
"""


def migrated_copy(db, tmp_path):
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL, sql_dir)
    migrate(db.url, sql_dir=sql_dir)
    (sql_dir / "migrations" / NEW_MIGRATION).write_text(NEW_MIGRATION_SQL)
    return sql_dir


def start_migrator(db, sql_dir, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(sql_dir / "migrate.sh"), db.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **env},
    )


def waiting_migrators(db) -> set[int]:
    """Backends of the migrator waiting for a relation lock on booking.inventory right now."""
    rows = db.rows(
        "SELECT l.pid FROM pg_locks AS l WHERE l.relation = 'booking.inventory'::regclass AND NOT l.granted"
        " AND l.mode = 'AccessExclusiveLock'")
    return {pid for (pid,) in rows}


def test_a_migration_behind_a_long_transaction_times_out_lets_readers_through_and_retries(blank_db, tmp_path):
    sql_dir = migrated_copy(blank_db, tmp_path)
    blocker = psycopg.connect(blank_db.url)  # a long transaction reading the table (ACCESS SHARE)
    migrator = None
    try:
        blocker.execute("SELECT count(*) FROM booking.inventory")
        migrator = start_migrator(blank_db, sql_dir, MIGRATE_LOCK_TIMEOUT="300ms", MIGRATE_LOCK_TRIES="60",
                                  MIGRATE_LOCK_PAUSE_S="0.2")
        # Each try is a new session: two distinct waiting backends mean the first try timed
        # out and the run started again.
        seen: set[int] = set()

        def two_tries_waited() -> bool:
            seen.update(waiting_migrators(blank_db))
            return len(seen) >= 2

        assert wait_until(two_tries_waited, seconds=30, interval=0.02), seen
        # A buyer reading the table while the blocker still holds it gets through: the
        # migrator's queued ACCESS EXCLUSIVE request is withdrawn at each timeout. Without
        # lock_timeout the buyer would wait behind it until the blocker ends.
        read: list[int] = []

        def buyer():
            with connect(blank_db.url) as conn:
                conn.execute("SET statement_timeout = '20s'")
                read.append(conn.execute("SELECT count(*) FROM booking.inventory").fetchone()[0])

        reader = threading.Thread(target=buyer)
        reader.start()
        reader.join(timeout=25)
        assert read == [0], "a reader stayed queued behind the waiting migration"
        assert migrator.poll() is None, "the migrator stopped while the lock was still held"
        blocker.rollback()  # the long transaction ends: the next try gets the lock
        out, err = migrator.communicate(timeout=60)
    finally:
        blocker.close()
        if migrator is not None and migrator.poll() is None:
            migrator.kill()
            migrator.wait()
    assert migrator.returncode == 0, err
    assert f"lock timeout (300ms) in migrations/{NEW_MIGRATION}, rolled back; try 2 of 60" in err
    assert "ERROR:  55P03: canceling statement due to lock timeout" in err
    assert out.count(f"applying versioned migrations/{NEW_MIGRATION}") >= 2  # tried, then applied
    assert blank_db.one("SELECT count(*) FROM migrate.history WHERE name = %s", (f"migrations/{NEW_MIGRATION}",)) == 1
    assert blank_db.one("SELECT to_regclass('core.lock_test_marker') IS NOT NULL")
    assert blank_db.one("SELECT count(*) FROM information_schema.columns"
                        " WHERE table_schema = 'booking' AND column_name = 'lock_test_note'") == 1
    # The repeatables owed after the versioned file came with it, and nothing is left to do.
    assert "applying repeatable grants.sql" in out
    assert "nothing to apply" in migrate(blank_db.url, sql_dir=sql_dir).stdout


def test_a_lock_held_through_every_try_fails_clearly_and_applies_nothing_of_the_file(blank_db, tmp_path):
    sql_dir = migrated_copy(blank_db, tmp_path)
    with psycopg.connect(blank_db.url) as blocker:
        blocker.execute("SELECT count(*) FROM booking.inventory")
        migrator = start_migrator(blank_db, sql_dir, MIGRATE_LOCK_TIMEOUT="200ms", MIGRATE_LOCK_TRIES="3",
                                  MIGRATE_LOCK_PAUSE_S="0.1")
        try:
            out, err = migrator.communicate(timeout=60)
        finally:
            if migrator.poll() is None:
                migrator.kill()
                migrator.wait()
        blocker.rollback()
    assert migrator.returncode != 0
    assert err.count("ERROR:  55P03: canceling statement due to lock timeout") == 3
    assert "try 3 of 3" in err
    assert (f"migrate: gave up after 3 tries: migrations/{NEW_MIGRATION} waited longer than lock_timeout"
            " (200ms) for a lock each time; nothing of it was applied") in err
    assert blank_db.one("SELECT to_regclass('core.lock_test_marker') IS NULL")
    assert blank_db.one("SELECT count(*) FROM migrate.history WHERE name LIKE %s", (f"%{NEW_MIGRATION}",)) == 0


def test_repeatables_owed_by_a_run_that_stopped_come_with_the_next_run(blank_db, tmp_path):
    """A versioned file that drops a view is applied, then the run gives up on the views file's
    lock: the next run re-applies the repeatables not applied since, though none changed (the
    history shows a versioned file applied after them), so the dropped view comes back."""
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL, sql_dir)
    migrate(blank_db.url, sql_dir=sql_dir)
    (sql_dir / "migrations" / "V9992__drops_a_view.sql").write_text("DROP VIEW ops.oversold_inventory;\n")
    with psycopg.connect(blank_db.url) as blocker:
        blocker.execute("SELECT count(*) FROM ops.stripe_events")  # CREATE OR REPLACE VIEW waits for it
        out = subprocess.run([str(sql_dir / "migrate.sh"), blank_db.url], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "MIGRATE_LOCK_TIMEOUT": "200ms",
                                              "MIGRATE_LOCK_TRIES": "2", "MIGRATE_LOCK_PAUSE_S": "0"})
        blocker.rollback()
    assert out.returncode != 0
    assert "gave up after 2 tries: views/ops.sql waited longer than lock_timeout" in out.stderr
    assert blank_db.one("SELECT count(*) FROM migrate.history WHERE name = 'migrations/V9992__drops_a_view.sql'") == 1
    assert blank_db.one("SELECT to_regclass('ops.oversold_inventory') IS NULL")

    again = migrate(blank_db.url, sql_dir=sql_dir)
    applied = [line.split()[-1] for line in again.stdout.splitlines() if line.startswith("applying ")]
    # The functions were re-applied after V9992 in the run that stopped; what came after them is owed.
    assert applied == ["views/ops.sql", "views/ops_console.sql", "grants.sql", "cron/schedules.sql"]
    assert blank_db.one("SELECT to_regclass('ops.oversold_inventory') IS NOT NULL")
    assert "nothing to apply" in migrate(blank_db.url, sql_dir=sql_dir).stdout


def test_another_failure_is_not_retried(blank_db, tmp_path):
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL, sql_dir)
    (sql_dir / "migrations" / "V9991__fails.sql").write_text("SELECT 1 / 0;\n")
    out = migrate(blank_db.url, sql_dir=sql_dir, check=False)
    assert out.returncode != 0
    assert "22012: division by zero" in out.stderr
    assert "lock timeout" not in out.stderr and "try 2" not in out.stderr


def test_a_bad_lock_timeout_setting_is_refused(blank_db):
    out = subprocess.run([str(SQL / "migrate.sh"), blank_db.url], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "MIGRATE_LOCK_TIMEOUT": "5s'; DROP TABLE x; --"})
    assert out.returncode == 2
    assert "MIGRATE_LOCK_TIMEOUT must be like 5s" in out.stderr
    assert blank_db.one("SELECT to_regclass('migrate.history') IS NULL")


# Measured by test_locks_each_migration_takes_on_tables_that_existed_before_it; docs/OPERATIONS.md "Lint"
# lists the same. Every mode at or above SHARE (each blocks writes to the table; ACCESS
# EXCLUSIVE blocks reads too).
LOCKS_ON_EXISTING_TABLES = {
    "V0001__schemas_and_cron_registry.sql": {},
    "V0002__stripe_events.sql": {},
    "V0003__inventory_and_holds.sql": {},
    "V0004__bookings_ledger_idempotency_jobs.sql": {
        # ADD COLUMN booking_id, ADD CONSTRAINT check_holds_booked (scans every row), an index.
        "booking.holds": "AccessExclusiveLock",
        # New tables' foreign keys onto the currency catalog.
        "core.currencies": "ShareRowExclusiveLock",
    },
    "V0005__errors_and_tokens.sql": {},
    "V0006__reconciliation.sql": {},
    "V0007__domains_instead_of_table_checks.sql": {
        # ALTER COLUMN ... TYPE <domain> (a rewrite) and DROP CONSTRAINT on each.
        **{t: "AccessExclusiveLock" for t in (
            "booking.booking_history", "booking.bookings", "booking.holds", "booking.inventory_buckets",
            "jobs.jobs", "ledger.lines", "ledger.transactions", "stripe.events")},
        # The catalogs whose foreign keys were dropped (dropping a key locks both of its tables).
        **{t: "AccessExclusiveLock" for t in ("booking.booking_states", "core.currencies", "ledger.accounts")},
    },
    # An UPDATE of queued jobs' payloads: row locks only.
    "V0008__confirmation_jobs_carry_their_message.sql": {},
    # CREATE INDEX (SHARE: writes wait while it builds) on each table the console reads;
    # DROP INDEX of the index its new one replaces (ACCESS EXCLUSIVE on booking.holds).
    "V0012__console_indexes.sql": {
        "booking.holds": "AccessExclusiveLock",
        **{t: "ShareLock" for t in ("booking.bookings", "booking.booking_history", "ledger.transactions",
                                    "jobs.jobs", "stripe.events")},
    },
    # ADD COLUMN unit_amount (nullable, no rewrite: a catalog change, held for an instant);
    # the new tables' foreign keys onto booking.inventory.
    "V0013__cache_versions.sql": {"booking.holds": "AccessExclusiveLock", "booking.inventory": "ShareRowExclusiveLock"},
    # ADD COLUMN queued (a default of false, no rewrite in PostgreSQL 11 and later).
    "V0014__waitlist_and_waiting_room.sql": {"booking.inventory": "AccessExclusiveLock"},
    # ALTER DOMAIN jobs.job_kind VALIDATE CONSTRAINT: SHARE on the table whose column has the
    # domain while its rows are checked (the DELETE before it: row locks).
    "V0015__bench_job_kind_out_of_production.sql": {"jobs.jobs": "ShareLock"},
}

STRONGEST_LOCK = """
SELECT c.oid::regclass::text,
       (array_agg(l.mode ORDER BY array_position(ARRAY['ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                                                         'AccessExclusiveLock'], l.mode::text) DESC))[1]
FROM pg_locks AS l
JOIN pg_class AS c ON c.oid = l.relation
WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
  AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
  AND c.relkind IN ('r', 'p') AND c.oid IN (SELECT t.oid FROM pg_temp.tables_before AS t)
GROUP BY c.oid
"""


def test_locks_each_migration_takes_on_tables_that_existed_before_it(blank_db):
    """Each versioned file applied as migrate.sh applies it (one transaction, as booking_owner),
    pg_locks read just before its COMMIT: the strongest lock it holds on each table an earlier
    file created."""
    subprocess.run(["psql", blank_db.url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(SQL / "bootstrap.sql")],
                   check=True, capture_output=True, timeout=60)
    measured = {}
    with connect(blank_db.url) as conn:
        for path in sorted((SQL / "migrations").glob("V*.sql")):
            conn.execute("DROP TABLE IF EXISTS pg_temp.tables_before")
            conn.execute("CREATE TEMP TABLE tables_before AS SELECT oid FROM pg_catalog.pg_class")
            with conn.transaction():
                conn.execute("SET LOCAL ROLE booking_owner")
                conn.execute(path.read_text())
                conn.execute("RESET ROLE")
                measured[path.name] = dict(conn.execute(STRONGEST_LOCK).fetchall())
    assert measured == LOCKS_ON_EXISTING_TABLES
