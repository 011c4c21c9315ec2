"""api.idempotency_begin / complete / fail."""

from __future__ import annotations

import time

import pytest
from psycopg.types.json import Jsonb

from tests.sql.helpers import on_connections, sqlstate_of


def begin(conn, key, request, principal="", lock_timeout="2 minutes", ttl="48 hours", scope="payment_intent"):
    return conn.execute(
        "SELECT * FROM api.idempotency_begin(%s, %s, %s, %s, %s::interval, %s::interval)",
        (scope, key, principal, Jsonb(request), lock_timeout, ttl),
    ).fetchone()


def test_started_then_completed_then_replayed(app):
    assert begin(app, "k1", {"booking_id": "b1", "n": 1}) == ("started", None, None)
    app.execute("SELECT api.idempotency_complete('payment_intent', 'k1', '', %s, 200)", (Jsonb({"id": "pi_1"}),))
    # Key order does not matter: the request is compared as canonical JSON.
    assert begin(app, "k1", {"n": 1, "booking_id": "b1"}) == ("replay", {"id": "pi_1"}, 200)


def test_another_request_with_the_key_is_ri001_even_while_in_progress(db, app):
    begin(app, "k2", {"booking_id": "b1"})
    assert sqlstate_of(app, "SELECT * FROM api.idempotency_begin('payment_intent', 'k2', '', %s)",
                       (Jsonb({"booking_id": "b2"}),)) == "RI001"
    assert sqlstate_of(app, "SELECT * FROM api.idempotency_begin('payment_intent', 'k2', '', %s)",
                       (Jsonb({"booking_id": "b1"}),)) == "RI002"
    assert db.one("SELECT count(*) FROM core.idempotency_keys") == 1


def test_principals_and_scopes_are_separate_and_empty_principal_is_not_null(db, app):
    begin(app, "k3", {"a": 1}, principal="")
    assert begin(app, "k3", {"a": 2}, principal="alice")[0] == "started"
    assert begin(app, "k3", {"a": 3}, principal="", scope="other")[0] == "started"
    assert sqlstate_of(app, "SELECT * FROM api.idempotency_begin('s', 'k', NULL, '{}')") == "22004"
    assert db.one("SELECT count(*) FROM core.idempotency_keys") == 3


def test_an_abandoned_key_is_taken_over_after_the_lock_timeout(db, app):
    begin(app, "k4", {"a": 1}, lock_timeout="1 second")
    assert sqlstate_of(app, "SELECT * FROM api.idempotency_begin('payment_intent', 'k4', '', %s, '1 second')",
                       (Jsonb({"a": 1}),)) == "RI002"
    time.sleep(1.1)
    assert begin(app, "k4", {"a": 1}, lock_timeout="1 second")[0] == "started"
    assert db.one("SELECT attempts FROM core.idempotency_keys") == 2


def test_retryable_failure_frees_the_key_final_failure_is_replayed(db, app):
    begin(app, "k5", {"a": 1})
    app.execute("SELECT api.idempotency_fail('payment_intent', 'k5', '', 'stripe timed out', true)")
    assert begin(app, "k5", {"a": 1})[0] == "started"
    app.execute("SELECT api.idempotency_fail('payment_intent', 'k5', '', 'card declined', false)")
    outcome, response, status = begin(app, "k5", {"a": 1})
    assert (outcome, status) == ("replay", 422)
    assert response == {"error": {"code": "failed", "message": "card declined"}}
    assert sqlstate_of(app, "SELECT api.idempotency_complete('payment_intent', 'k5', '', '{}', 200)") == "RB002"
    assert sqlstate_of(app, "SELECT api.idempotency_complete('payment_intent', 'nope', '', '{}', 200)") == "RB005"


def test_an_expired_key_starts_afresh_and_the_purge_job_deletes_expired_keys(db, app):
    begin(app, "k6", {"a": 1}, ttl="1 minute")
    app.execute("SELECT api.idempotency_complete('payment_intent', 'k6', '', '{}', 201)")
    db.one("UPDATE core.idempotency_keys SET expires_at = now() - interval '1 second' RETURNING 1")
    assert begin(app, "k6", {"a": 2}, ttl="1 minute")[0] == "started"  # a new request is fine now
    begin(app, "k7", {"a": 1})
    db.one("UPDATE core.idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = 'k7' RETURNING 1")
    assert db.one("SELECT core.run_cron_job('booking-purge-idempotency-keys')") == {"deleted": 1}
    assert db.one("SELECT count(*) FROM core.idempotency_keys") == 1


@pytest.mark.parametrize(
    "args, code",
    [(("", "k", "", {}), "22023"), (("s" * 101, "k", "", {}), "22001"), (("s", "", "", {}), "22023"),
     (("s", "k" * 256, "", {}), "22001"), (("s", "k", "p" * 201, {}), "22001"), ((None, "k", "", {}), "22004"),
     (("s", None, "", {}), "22004")],
)
def test_bad_arguments_are_class_22_and_write_nothing(db, app, args, code):
    scope, key, principal, request = args
    assert sqlstate_of(app, "SELECT * FROM api.idempotency_begin(%s, %s, %s, %s)",
                       (scope, key, principal, Jsonb(request))) == code
    assert db.one("SELECT count(*) FROM core.idempotency_keys") == 0


def test_twenty_concurrent_begins_one_started_the_rest_in_progress(db):
    results, errors = on_connections(db.app_url, 20, lambda c: begin(c, "k-race", {"a": 1})[0])
    assert results == ["started"]
    assert sorted(e.sqlstate for e in errors) == ["RI002"] * 19
