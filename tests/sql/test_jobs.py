"""The job queue: claims with SKIP LOCKED, leases fenced by a token, backoff, dead jobs."""

from __future__ import annotations

import time
import uuid

import pytest
from psycopg.types.json import Jsonb

from tests.pg import connect
from tests.sql.helpers import on_connections, sqlstate_of

KIND = "email.booking_confirmed"


def enqueue(db, n=1, max_attempts=10):
    with connect(db.url) as conn:
        ids = [conn.execute("SELECT jobs.enqueue(%s, %s)", (KIND, Jsonb({"n": i}))).fetchone()[0] for i in range(n)]
        conn.execute("UPDATE jobs.jobs SET max_attempts = %s", (max_attempts,))
    return ids


def claim(conn, worker="w1", limit=10, lease="5 minutes"):
    return conn.execute("SELECT * FROM api.claim_jobs(%s, %s, %s, %s::interval)",
                        (worker, [KIND], limit, lease)).fetchall()


def test_claim_complete_once(db, worker):
    (job_id,) = enqueue(db)
    [(claimed_id, kind, payload, attempt, token)] = claim(worker)
    assert (claimed_id, kind, payload, attempt) == (job_id, KIND, {"n": 0}, 1)
    assert claim(worker) == []  # running, lease not over
    assert worker.execute("SELECT api.complete_job(%s, %s, '{\"sent\": true}')", (job_id, token)).fetchone()[0] is True
    assert worker.execute("SELECT api.complete_job(%s, %s)", (job_id, token)).fetchone()[0] is False
    assert db.rows("SELECT status, result FROM jobs.jobs") == [("done", {"sent": True})]
    assert db.rows("SELECT kind, status, count FROM ops.jobs_overview") == [(KIND, "done", 1)]


def test_a_stalled_worker_cannot_finish_a_job_taken_over_after_its_lease(db, worker):
    (job_id,) = enqueue(db)
    [(_, _, _, _, old_token)] = claim(worker, "stalled", lease="1 second")
    time.sleep(1.1)
    [(_, _, _, attempt, new_token)] = claim(worker, "rescuer")
    assert attempt == 2 and new_token != old_token
    assert worker.execute("SELECT api.complete_job(%s, %s)", (job_id, old_token)).fetchone()[0] is False
    assert worker.execute("SELECT api.fail_job(%s, %s, 'late', true)", (job_id, old_token)).fetchone()[0] is False
    assert db.one("SELECT status FROM jobs.jobs") == "running"
    assert worker.execute("SELECT api.complete_job(%s, %s)", (job_id, new_token)).fetchone()[0] is True
    assert db.rows("SELECT status, attempts, locked_by FROM jobs.jobs") == [("done", 2, "rescuer")]


def test_failures_back_off_then_die_and_ops_retry_brings_them_back(db, worker):
    (job_id,) = enqueue(db, max_attempts=2)
    [(_, _, _, _, token)] = claim(worker)
    assert worker.execute("SELECT api.fail_job(%s, %s, 'smtp down', true)", (job_id, token)).fetchone()[0] is True
    status, delay = db.rows("SELECT status, run_at - now() FROM jobs.jobs")[0]
    assert status == "failed" and 7 <= delay.total_seconds() <= 13  # 10 s +- 25% jitter
    assert claim(worker) == []
    db.one("UPDATE jobs.jobs SET run_at = now() RETURNING 1")
    [(_, _, _, attempt, token)] = claim(worker)
    assert attempt == 2
    worker.execute("SELECT api.fail_job(%s, %s, 'smtp still down', true)", (job_id, token))
    status, errors = db.rows("SELECT status, errors FROM jobs.jobs")[0]
    assert status == "dead" and [e["error"] for e in errors] == ["smtp down", "smtp still down"]
    with connect(db.ops_url) as ops:
        ops.execute("SELECT ops.retry_job(%s)", (job_id,))
        assert sqlstate_of(ops, "SELECT ops.retry_job(%s)", (job_id,)) == "RB002"
        assert sqlstate_of(ops, "SELECT ops.retry_job(%s)", (uuid.uuid4(),)) == "RB005"
    [(_, _, _, attempt, _)] = claim(worker)
    assert attempt == 3


def test_a_non_retryable_failure_is_dead_at_once(db, worker):
    (job_id,) = enqueue(db)
    [(_, _, _, _, token)] = claim(worker)
    worker.execute("SELECT api.fail_job(%s, %s, 'no such address', false)", (job_id, token))
    assert db.one("SELECT status FROM jobs.jobs") == "dead"


def test_a_lease_lost_on_the_last_attempt_makes_the_job_dead(db, worker):
    enqueue(db, max_attempts=1)
    claim(worker, lease="1 second")
    time.sleep(1.1)
    assert claim(worker) == []
    assert db.one("SELECT status FROM jobs.jobs") == "dead"


def test_eight_workers_claiming_at_once_take_each_job_once(db):
    enqueue(db, n=200)
    batches, errors = on_connections(db.worker_url, 8, lambda c: claim(c, f"w{id(c)}", limit=40))
    assert errors == []
    claimed = [row[0] for batch in batches for row in batch]
    assert len(claimed) == len(set(claimed)) == 200


@pytest.mark.parametrize("args, code", [
    ((None, [KIND], 1, "1 minute"), "22004"), (("w", None, 1, "1 minute"), "22004"),
    (("w", [], 1, "1 minute"), "22023"), (("w", [KIND], 0, "1 minute"), "22023"),
    (("w", [KIND], 1, "0 seconds"), "22023"), (("w" * 201, [KIND], 1, "1 minute"), "22001"),
])
def test_bad_claims(db, worker, args, code):
    enqueue(db)
    assert sqlstate_of(worker, "SELECT * FROM api.claim_jobs(%s, %s, %s, %s::interval)", args) == code
    assert db.one("SELECT status FROM jobs.jobs") == "queued"


def test_the_daily_reconciliation_job_is_enqueued_once_per_day(db):
    first = db.one("SELECT core.run_cron_job('booking-enqueue-reconciliation')")
    second = db.one("SELECT core.run_cron_job('booking-enqueue-reconciliation')")
    assert first == second
    payload = db.one("SELECT payload FROM jobs.jobs WHERE kind = 'stripe.reconcile'")
    assert db.one("SELECT %s::timestamptz = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
                  (payload["window_end"],))
    assert db.one("SELECT %s::timestamptz - %s::timestamptz", (payload["window_end"], payload["window_start"])).days == 1


def test_complete_jobs_in_a_batch_checks_every_lease(db, worker):
    first, second = enqueue(db, n=2)
    claimed = {row[0]: row[4] for row in claim(worker, lease="1 second")}
    time.sleep(1.1)
    [(rescued, _, _, _, new_token)] = claim(worker, "rescuer", limit=1)
    stale = [j for j in claimed if j != rescued][0]
    result = worker.execute("SELECT api.complete_jobs(%s::uuid[], %s::uuid[], NULL)",
                         ([stale, rescued], [claimed[stale], claimed[rescued]])).fetchone()[0]
    # The stale worker's own job is still its own (nobody took it); the rescued one is not.
    assert result == [True, False]
    assert worker.execute("SELECT api.complete_jobs(%s::uuid[], %s::uuid[], %s::jsonb[])",
                       ([rescued], [new_token], [Jsonb({"ok": 1})])).fetchone()[0] == [True]
    assert db.rows("SELECT job_id, status FROM jobs.jobs ORDER BY job_id") == sorted([(first, "done"), (second, "done")])
    assert sqlstate_of(worker, "SELECT api.complete_jobs(%s::uuid[], %s::uuid[], NULL)", ([first], [])) == "22023"


def test_no_bench_job_kind_in_production(db):
    """V0015: the benchmarks' no-op kind is theirs (tests/bench/noop_worker.py adds it to the
    bench's own database); a production database refuses it like any unknown kind."""
    with connect(db.url) as conn:
        assert sqlstate_of(conn, "SELECT jobs.enqueue('bench.noop', '{}'::jsonb)") == "23514"
        assert sqlstate_of(conn, "SELECT jobs.enqueue('no.such.kind', '{}'::jsonb)") == "23514"
        assert conn.execute("SELECT jobs.enqueue(%s, '{}'::jsonb) IS NOT NULL", (KIND,)).fetchone()[0]
