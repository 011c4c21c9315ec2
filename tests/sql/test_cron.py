"""The cron job registry, the dispatcher's heartbeats and what api.health() makes of them."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.pg import SQL, connect

SCHEDULES = SQL / "cron" / "schedules.sql"


def test_schedules_are_in_pg_cron_as_the_migrating_login_role(cron_db):
    rows = cron_db.rows(
        "SELECT j.jobname, j.schedule, j.command, j.username, j.active, c.job_function FROM cron.job AS j "
        "JOIN core.cron_jobs AS c USING (jobname) ORDER BY 1"
    )
    assert rows, "no booking-* job is scheduled"
    registered = cron_db.rows("SELECT jobname, schedule FROM core.cron_jobs ORDER BY 1")
    assert [(r[0], r[1]) for r in rows] == registered
    for jobname, _, command, username, active, function in rows:
        expected = ("CALL booking.sweep_holds_cron()" if jobname == "booking-sweep-holds"
                    else f"SELECT core.run_cron_job('{jobname}')")
        assert command == expected, (jobname, function, command)
        assert username == "postgres" and active


def test_sync_unschedules_jobs_no_longer_declared(cron_db):
    with connect(cron_db.url) as conn:
        conn.execute("SELECT cron.schedule('booking-obsolete-job', '0 3 * * *', 'SELECT 1')")
        conn.execute(SCHEDULES.read_text())
        assert conn.execute("SELECT count(*) FROM cron.job WHERE jobname = 'booking-obsolete-job'").fetchone()[0] == 0


def test_a_run_is_recorded_and_a_failing_job_shows_in_health(db):
    assert db.one("SELECT core.run_cron_job('booking-prune-cron-history') ? 'deleted'")
    assert db.rows(
        "SELECT last_status, runs, failures FROM ops.cron_jobs WHERE jobname = 'booking-prune-cron-history'"
    ) == [("ok", 1, 0)]
    with connect(db.url) as conn:
        conn.execute(
            "CREATE FUNCTION core.broken_job() RETURNS jsonb LANGUAGE sql AS $$ SELECT (1 / 0)::text::jsonb $$"
        )
        conn.execute(
            "INSERT INTO core.cron_jobs (jobname, schedule, job_function, description, max_silence) "
            "VALUES ('booking-broken', '* * * * *', 'core.broken_job', 'test', '5 minutes')"
        )
        result = conn.execute("SELECT core.run_cron_job('booking-broken')").fetchone()[0]
    assert result["status"] == "failed" and "division by zero" in result["error"]
    health = db.one("SELECT api.health()")
    assert health["status"] == "degraded"
    assert health["checks"]["cron"]["jobs"]["booking-broken"]["status"] == "failed"
    assert health["checks"]["cron"]["jobs"]["booking-prune-cron-history"]["status"] == "ok"


def test_a_job_not_run_yet_is_ok_until_its_max_silence_then_late(db):
    health = db.one("SELECT api.health()")
    assert health["checks"]["cron"]["jobs"]["booking-prune-cron-history"]["status"] == "ok"
    db.one("UPDATE core.cron_jobs SET registered_at = now() - interval '3 hours' RETURNING 1")
    health = db.one("SELECT api.health()")
    job = health["checks"]["cron"]["jobs"]["booking-prune-cron-history"]
    assert (health["status"], job["status"]) == ("degraded", "late")
    assert 3500 <= job["late_by_seconds"] <= 3700


def test_unknown_job_is_rb005(db):
    with pytest.raises(psycopg.Error) as info:
        db.one("SELECT core.run_cron_job('booking-nope')")
    assert info.value.sqlstate == "RB005"


@pytest.mark.slow
def test_pg_cron_really_runs_a_function_job_and_a_procedure_job(cron_db):
    """pg_cron runs at minute granularity: this waits for at most ~75 s. Both kinds of
    job command are exercised: SELECT core.run_cron_job(...) and CALL of a procedure
    that commits as it goes (which pg_cron must run outside a transaction block)."""
    jobs = ("booking-prune-cron-history", "booking-sweep-holds")

    def runs():
        return dict(cron_db.rows("SELECT jobname, runs FROM ops.cron_jobs WHERE jobname = ANY(%s)", (list(jobs),)))

    before = runs()
    commands = {name: cron_db.one(
        "SELECT core.cron_command(jobname, job_function) FROM core.cron_jobs WHERE jobname = %s", (name,)
    ) for name in jobs}
    assert commands["booking-sweep-holds"].startswith("CALL ")
    for name, command in commands.items():
        cron_db.one("SELECT cron.schedule(%s, '* * * * *', %s)", (f"probe-{name}", command))
    try:
        deadline = time.monotonic() + 75
        while time.monotonic() < deadline and not all(runs()[j] > before[j] for j in jobs):
            time.sleep(1)
        assert all(runs()[j] > before[j] for j in jobs), f"pg_cron did not run both jobs within 75 s: {runs()}"
        statuses = dict(cron_db.rows("SELECT jobname, last_status FROM ops.cron_jobs WHERE jobname = ANY(%s)",
                                     (list(jobs),)))
        assert statuses == {j: "ok" for j in jobs}
    finally:
        for name in jobs:
            cron_db.one("SELECT cron.unschedule(%s)", (f"probe-{name}",))


def test_health_covers_the_queue_unswept_holds_and_critical_errors(db):
    health = db.one("SELECT api.health()")
    assert health["status"] == "ok"
    assert {"database", "cron", "stripe_events", "jobs", "holds", "errors"} <= set(health["checks"])
    with connect(db.url) as conn:
        conn.execute("SELECT jobs.enqueue('email.booking_confirmed', '{}'::jsonb, NULL, now() - interval '11 minutes')")
    health = db.one("SELECT api.health()")
    assert (health["status"], health["checks"]["jobs"]["status"], health["checks"]["jobs"]["due"]) == ("degraded", "degraded", 1)
    with connect(db.url) as conn:
        conn.execute("DELETE FROM jobs.jobs")
        inventory = conn.execute("SELECT api.create_inventory('h', 10, 100, 'usd')").fetchone()[0]
        conn.execute("SELECT api.place_hold(%s, 1, 'x')", (inventory,))
        conn.execute("UPDATE booking.holds SET expires_at = now() - interval '11 minutes'")
    health = db.one("SELECT api.health()")
    assert health["checks"]["holds"]["status"] == "degraded" and health["checks"]["holds"]["expired_unswept"] == 1
    db.one("CALL booking.sweep_expired_holds()")
    assert db.one("SELECT api.health()")["status"] == "ok"
    db.one("SELECT api.log_error('critical', 'test', 'boom')")
    assert db.one("SELECT api.health()")["checks"]["errors"]["open_critical"] == 1
