"""api.ingest_stripe_event and api.record_stripe_event_failure, called directly."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.pg import connect
from tests.sql.helpers import on_connections
from tests.stripe_events import event


def ingest(url: str, payload, correlation_id: str | None = None):
    with connect(url) as conn:
        with conn.transaction():
            if correlation_id:
                conn.execute("SELECT set_config('app.correlation_id', %s, true)", (correlation_id,))
            return conn.execute("SELECT api.ingest_stripe_event(%s)", (Jsonb(payload),)).fetchone()[0]


def test_an_event_is_stored_once_and_answered_ignored_then_duplicate(db):
    evt = event()
    assert ingest(db.shim_url, evt, "req-123") == "ignored"
    assert ingest(db.shim_url, evt) == "duplicate"
    assert ingest(db.shim_url, evt) == "duplicate"
    rows = db.rows(
        "SELECT status, attempts, payload, correlation_id, processed_at IS NOT NULL FROM stripe.events WHERE event_id = %s",
        (evt["id"],),
    )
    assert rows == [("ignored", 1, evt, "req-123", True)]


BAD_PAYLOADS = {
    "array": [1, 2],
    "string": "evt_1",
    "no id": {"object": "event", "type": "x", "data": {"object": {}}},
    "numeric id": {"id": 5, "object": "event", "type": "x", "data": {"object": {}}},
    "empty id": {"id": "", "object": "event", "type": "x", "data": {"object": {}}},
    "id too long": {"id": "e" * 256, "object": "event", "type": "x", "data": {"object": {}}},
    "not an event object": {"id": "evt_1", "object": "charge", "type": "x", "data": {"object": {}}},
    "no type": {"id": "evt_1", "object": "event", "data": {"object": {}}},
    "type not a string": {"id": "evt_1", "object": "event", "type": ["x"], "data": {"object": {}}},
    "no data.object": {"id": "evt_1", "object": "event", "type": "x", "data": {}},
    "data.object not an object": {"id": "evt_1", "object": "event", "type": "x", "data": {"object": "x"}},
}


@pytest.mark.parametrize("payload", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_a_payload_that_is_not_a_stripe_event_is_rw001_and_writes_nothing(db, payload):
    with pytest.raises(psycopg.Error) as info:
        ingest(db.shim_url, payload)
    assert info.value.sqlstate == "RW001"
    with pytest.raises(psycopg.Error) as info:
        with connect(db.shim_url) as conn:
            conn.execute("SELECT api.record_stripe_event_failure(%s, 'XX000', 'boom')", (Jsonb(payload),))
    assert info.value.sqlstate == "RW001"
    assert db.one("SELECT count(*) FROM stripe.events") == 0


def test_null_event_is_rw001(db):
    with pytest.raises(psycopg.Error) as info:
        with connect(db.shim_url) as conn:
            conn.execute("SELECT api.ingest_stripe_event(NULL)")
    assert info.value.sqlstate == "RW001"


def record_failure(url: str, payload, sqlstate="XX000", message="apply failed"):
    with connect(url) as conn:
        conn.execute("SELECT api.record_stripe_event_failure(%s, %s, %s)", (Jsonb(payload), sqlstate, message))


def test_a_failure_keeps_payload_attempts_and_error_and_schedules_a_retry(db):
    evt = event("payment_intent.succeeded")
    record_failure(db.shim_url, evt, "40P01", "deadlock detected")
    row = db.rows(
        "SELECT status, attempts, payload, last_error, last_sqlstate, next_attempt_at - now() FROM stripe.events"
    )[0]
    status, attempts, payload, last_error, last_sqlstate, delay = row
    assert (status, attempts, payload, last_error, last_sqlstate) == ("failed", 1, evt, "deadlock detected", "40P01")
    assert 50 <= delay.total_seconds() <= 61

    record_failure(db.shim_url, evt, "XX000", "second")
    attempts, delay, err = db.rows("SELECT attempts, next_attempt_at - now(), last_error FROM stripe.events")[0]
    assert (attempts, err) == (2, "second")
    assert 110 <= delay.total_seconds() <= 121  # backoff doubled


def test_failures_end_dead_and_a_redelivery_still_applies(db):
    evt = event()
    max_attempts = db.one("SELECT stripe.attempts_max()")
    for _ in range(max_attempts):
        record_failure(db.shim_url, evt)
    assert db.rows("SELECT status, attempts, next_attempt_at FROM stripe.events") == [("dead", max_attempts, None)]
    assert db.one("SELECT count(*) FROM ops.stripe_events_dead") == 1
    assert ingest(db.shim_url, evt) == "ignored"
    assert db.rows("SELECT status, attempts FROM stripe.events") == [("ignored", max_attempts + 1)]


def test_a_failure_recorded_after_a_concurrent_success_does_not_undo_it(db):
    evt = event()
    assert ingest(db.shim_url, evt) == "ignored"
    record_failure(db.shim_url, evt)
    assert db.rows("SELECT status, attempts FROM stripe.events") == [("ignored", 1)]


def test_record_failure_rejects_a_malformed_sqlstate_and_writes_nothing(db):
    with pytest.raises(psycopg.Error) as info:
        record_failure(db.shim_url, event(), sqlstate="not a code")
    assert info.value.sqlstate == "22023"
    assert db.one("SELECT count(*) FROM stripe.events") == 0


def test_twenty_concurrent_ingests_of_one_event_store_one_row(db):
    evt = event()
    outcomes, errors = on_connections(
        db.shim_url, 20, lambda c: c.execute("SELECT api.ingest_stripe_event(%s)", (Jsonb(evt),)).fetchone()[0])
    assert errors == []
    assert sorted(outcomes) == ["duplicate"] * 19 + ["ignored"]
    assert db.one("SELECT count(*) FROM stripe.events WHERE event_id = %s", (evt["id"],)) == 1


def test_health_reports_dead_events_as_degraded(db):
    assert db.one("SELECT api.health() ->> 'status'") == "ok"
    evt = event()
    for _ in range(db.one("SELECT stripe.attempts_max()")):
        record_failure(db.shim_url, evt)
    health = db.one("SELECT api.health()")
    assert health["status"] == "degraded"
    assert health["checks"]["stripe_events"]["dead"] == 1
    assert json.loads(json.dumps(health))  # plain JSON all the way down
