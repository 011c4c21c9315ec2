"""ops.success_metrics: each measure moves across its target when planted data moves it.

The rows are planted as superuser with triggers off (session_replication_role = replica):
these tests are about what the view counts, not about the functions that write the rows
(their own tests cover those). The view is read as the ops login, as the console does."""

from __future__ import annotations

import uuid

import pytest

from tests.pg import connect
from tests.sql.helpers import new_inventory

METRICS = [
    "zombie_holds", "sweeper_seconds_since_run", "late_payments_pct", "duplicate_charges",
    "payment_intents_recorded_pct", "events_applied_twice", "idempotency_key_reuse_pct",
    "critical_alert_latency_seconds", "error_resolution_hours", "errors_per_day",
]


def metrics(db) -> dict[str, tuple]:
    with connect(db.ops_url) as conn:
        rows = conn.execute("SELECT metric, value, target, ok, period FROM ops.success_metrics").fetchall()
    return {r[0]: r[1:] for r in rows}


@pytest.fixture
def su(db):
    """A superuser connection that plants rows without firing triggers."""
    with connect(db.url) as conn:
        conn.execute("SET session_replication_role = replica")
        yield conn


def ok(db, metric):
    return metrics(db)[metric][2]


def value(db, metric):
    return float(metrics(db)[metric][0])


def test_one_row_per_measure_all_met_on_an_empty_database(db):
    m = metrics(db)
    assert list(m) == METRICS
    assert all(row[2] for row in m.values()), m
    assert all(row[1] and row[3] for row in m.values())  # a target and a period in words


def booking(su, status="pending_payment", pi=None):
    booking_id = uuid.uuid4()
    su.execute(
        "INSERT INTO booking.bookings (booking_id, holder, request_fingerprint, status, amount, currency,"
        " expires_at, payment_intent_id, response) VALUES (%s, 'h', 'f', %s, 100, 'usd', now(), %s, '{}')",
        (booking_id, status, pi),
    )
    return booking_id


def history(su, booking_id, event, from_status, to_status, stripe_event_id=None, ago="1 hour"):
    """A transition caused by a Stripe event (its own one unless given)."""
    stripe_event_id = stripe_event_id or "evt_" + uuid.uuid4().hex
    su.execute(
        "INSERT INTO booking.booking_history (booking_id, event, from_status, to_status, stripe_event_id, at)"
        " VALUES (%s, %s, %s, %s, %s, now() - %s::interval)",
        (booking_id, event, from_status, to_status, stripe_event_id, ago),
    )


def charge(su, booking_id, pi, ago="1 hour"):
    su.execute(
        "INSERT INTO ledger.transactions (kind, stripe_object_id, booking_id, payment_intent_id, currency, amount,"
        " posted_at) VALUES ('charge', %s, %s, %s, 'usd', 100, now() - %s::interval)",
        (pi, booking_id, pi, ago),
    )


def test_zombie_holds_are_open_holds_twenty_minutes_past_their_deadline(db, app, su):
    inventory = new_inventory(app)
    insert = ("INSERT INTO booking.holds (inventory_id, bucket_no, quantity, holder, expires_at)"
              " VALUES (%s, 0, 1, 'h', now() - %s::interval)")
    su.execute(insert, (inventory, "10 minutes"))  # dead, not yet a zombie
    assert ok(db, "zombie_holds") and value(db, "zombie_holds") == 0
    su.execute(insert, (inventory, "21 minutes"))
    assert not ok(db, "zombie_holds") and value(db, "zombie_holds") == 1
    su.execute("UPDATE booking.holds SET status = 'expired', ended_at = now()")
    assert ok(db, "zombie_holds")


def test_sweeper_lateness_follows_its_last_run(db, su):
    assert ok(db, "sweeper_seconds_since_run")  # registered just now, not run yet
    su.execute("INSERT INTO core.cron_runs (jobname, last_started_at, last_finished_at, last_status, runs)"
               " VALUES ('booking-sweep-holds', now() - interval '11 minutes', now() - interval '11 minutes', 'ok', 1)")
    assert not ok(db, "sweeper_seconds_since_run")
    assert 650 < value(db, "sweeper_seconds_since_run") < 700
    su.execute("UPDATE core.cron_runs SET last_started_at = now() - interval '30 seconds'"
               " WHERE jobname = 'booking-sweep-holds'")
    assert ok(db, "sweeper_seconds_since_run")
    su.execute("UPDATE core.cron_runs SET last_status = 'failed' WHERE jobname = 'booking-sweep-holds'")
    assert not ok(db, "sweeper_seconds_since_run")


def test_late_payments_must_stay_under_one_percent(db, su):
    for _ in range(99):
        history(su, booking(su, "confirmed"), "payment_succeeded", "pending_payment", "confirmed")
    history(su, booking(su, "confirmed"), "payment_succeeded", "expired", "confirmed")
    assert value(db, "late_payments_pct") == 1.0 and not ok(db, "late_payments_pct")
    for _ in range(100):
        history(su, booking(su, "confirmed"), "payment_succeeded", "payment_failed", "confirmed")
    assert value(db, "late_payments_pct") == 0.5 and ok(db, "late_payments_pct")
    # Arrived without units for it (the holds were gone): late too.
    for _ in range(2):
        history(su, booking(su, "refund_pending"), "payment_succeeded_without_capacity", "pending_payment",
                "refund_pending")
    assert not ok(db, "late_payments_pct")
    # Older than the window: not counted.
    su.execute("UPDATE booking.booking_history SET at = now() - interval '8 days' WHERE from_status <> 'payment_failed'")
    assert ok(db, "late_payments_pct") and value(db, "late_payments_pct") == 0


def test_duplicate_charges_are_bookings_charged_twice(db, su):
    b = booking(su, "confirmed", "pi_1")
    charge(su, b, "pi_1")
    assert ok(db, "duplicate_charges")
    charge(su, b, "pi_2")
    assert value(db, "duplicate_charges") == 1 and not ok(db, "duplicate_charges")
    su.execute("UPDATE ledger.transactions SET posted_at = now() - interval '31 days'")
    assert ok(db, "duplicate_charges")


def test_payment_intents_recorded_is_every_charge_known_to_a_booking(db, su):
    charge(su, booking(su, "confirmed", "pi_known"), "pi_known")
    assert value(db, "payment_intents_recorded_pct") == 100 and ok(db, "payment_intents_recorded_pct")
    charge(su, None, "pi_from_nowhere")
    assert value(db, "payment_intents_recorded_pct") == 50 and not ok(db, "payment_intents_recorded_pct")


def test_events_applied_twice_are_repeated_transitions_of_one_event(db, su):
    b = booking(su, "refunded")
    history(su, b, "payment_succeeded", "pending_payment", "confirmed", "evt_1")
    history(su, b, "full_refund", "confirmed", "refunded", "evt_2")
    assert ok(db, "events_applied_twice")
    history(su, b, "full_refund", "confirmed", "refunded", "evt_2")
    assert value(db, "events_applied_twice") == 1 and not ok(db, "events_applied_twice")


def test_idempotency_key_reuse_must_stay_under_a_tenth_of_a_percent(db, su):
    insert = ("INSERT INTO core.idempotency_keys (scope, principal, key, fingerprint, status, response, attempts,"
              " expires_at) SELECT 's', 'p', %s || g, 'f', 'completed', '{}', %s, now() + interval '1 day'"
              " FROM generate_series(1, %s) AS g")
    su.execute(insert, ("once-", 1, 999))
    su.execute(insert, ("twice-", 2, 1))
    assert value(db, "idempotency_key_reuse_pct") == 0.1 and not ok(db, "idempotency_key_reuse_pct")
    su.execute(insert, ("more-", 1, 1000))
    assert value(db, "idempotency_key_reuse_pct") == 0.05 and ok(db, "idempotency_key_reuse_pct")


def test_critical_alert_latency_is_the_slowest_alert_job(db, su):
    insert = ("INSERT INTO jobs.jobs (kind, status, created_at, finished_at) VALUES"
              " ('alert.notify', %s, now() - %s::interval, now() - %s::interval)")
    su.execute(insert, ("done", "40 seconds", "0 seconds"))
    assert ok(db, "critical_alert_latency_seconds") and 39 <= value(db, "critical_alert_latency_seconds") <= 45
    # Still waiting after 2 minutes: already too late.
    su.execute(insert.replace("now() - %s::interval)", "NULL)"), ("failed", "2 minutes"))
    assert not ok(db, "critical_alert_latency_seconds")
    su.execute("DELETE FROM jobs.jobs WHERE status = 'failed'")
    su.execute(insert, ("done", "10 minutes", "8 minutes"))  # 2 minutes late
    assert not ok(db, "critical_alert_latency_seconds")


def test_errors_resolved_within_four_hours_on_average(db, su):
    insert = ("INSERT INTO core.error_groups (fingerprint, severity, source, message, first_seen, resolved_at)"
              " VALUES (%s, %s, 's', 'm', now() - %s::interval, now() - %s::interval)")
    su.execute(insert, ("a", "error", "5 hours", "3 hours"))  # 2 h
    assert ok(db, "error_resolution_hours") and 1.99 < value(db, "error_resolution_hours") < 2.01
    su.execute(insert, ("b", "critical", "7 hours", "1 hour"))  # 6 h: mean 4 h
    assert not ok(db, "error_resolution_hours")
    su.execute(insert, ("c", "warning", "7 hours", "1 hour"))  # warnings are not counted
    su.execute("INSERT INTO core.error_groups (fingerprint, severity, source, message, first_seen)"
               " VALUES ('d', 'error', 's', 'm', now() - interval '10 minutes')")  # open 10 minutes
    assert ok(db, "error_resolution_hours")  # (2 + 6 + 1/6) / 3 < 4


def test_errors_per_day_must_not_grow_month_over_month(db, su):
    su.execute("INSERT INTO core.error_groups (fingerprint, severity, source, message) VALUES ('g', 'error', 's', 'm')")
    insert = ("INSERT INTO core.errors (fingerprint, severity, source, message, at)"
              " SELECT 'g', 'error', 's', 'm', now() - %s::interval FROM generate_series(1, %s)")
    su.execute(insert, ("40 days", 60))  # 2 a day the month before
    su.execute(insert, ("1 day", 30))  # 1 a day now
    assert value(db, "errors_per_day") == 1 and ok(db, "errors_per_day")
    su.execute(insert, ("2 days", 31))
    assert not ok(db, "errors_per_day")
