"""Stripe events applied to bookings and the ledger, called through api.ingest_stripe_event."""

from __future__ import annotations

import uuid

import pytest
from psycopg.types.json import Jsonb

from tests.pg import connect
from tests.sql.helpers import new_inventory, on_connections, place, sqlstate_of, wait_past
from tests.stripe_events import dispute, event, payment_intent, refund


def ingest(conn, evt):
    return conn.execute("SELECT api.ingest_stripe_event(%s)", (Jsonb(evt),)).fetchone()[0]


def booking(app, capacity=10, quantity=2, ttl="15 minutes", amount=2500):
    inventory = new_inventory(app, capacity, ttl=ttl, amount=amount)
    hold, expires_at = place(app, inventory, quantity)
    answer = app.execute("SELECT api.create_booking(%s, 'alice', %s::uuid[])", (uuid.uuid4().hex, [hold])).fetchone()[0]
    return inventory, answer["booking_id"], answer["amount"], expires_at


def state(db, booking_id):
    return db.one("SELECT status FROM booking.bookings WHERE booking_id = %s", (booking_id,))


def ledger(db, booking_id):
    row = db.rows("SELECT paid, refunded, disputed, net FROM ops.booking_ledger WHERE booking_id = %s", (booking_id,))
    return row[0] if row else (0, 0, 0, 0)


def test_a_payment_confirms_once_whatever_announces_it(db, app, shim):
    inventory, booking_id, amount, _ = booking(app)
    pi = "pi_" + uuid.uuid4().hex[:10]
    succeeded = event("payment_intent.succeeded", payment_intent(pi, booking_id, amount))
    assert ingest(shim, succeeded) == "processed"
    assert ingest(shim, succeeded) == "duplicate"
    session = event("checkout.session.completed", {"id": "cs_1", "object": "checkout.session", "payment_status": "paid",
                                                   "payment_intent": pi, "amount_total": amount, "currency": "usd",
                                                   "metadata": {"booking_id": str(booking_id)}})
    assert ingest(shim, session) == "processed"
    assert state(db, booking_id) == "confirmed"
    assert ledger(db, booking_id) == (amount, 0, 0, amount)
    assert db.one("SELECT count(*) FROM ledger.transactions") == 1
    assert db.one("SELECT count(*) FROM jobs.jobs WHERE kind = 'email.booking_confirmed'") == 1
    assert app.execute("SELECT * FROM api.availability(%s)", (inventory,)).fetchone() == (10, 2, 0, 8)
    history = app.execute("SELECT api.get_booking(%s)", (booking_id,)).fetchone()[0]["history"]
    assert history[-1]["stripe_event_id"] == succeeded["id"]
    assert db.rows("SELECT * FROM ops.ledger_imbalances") == []


def test_failed_then_succeeded_and_a_late_failure_changes_nothing(db, app, shim):
    _, booking_id, amount, _ = booking(app)
    pi = "pi_f"
    assert ingest(shim, event("payment_intent.payment_failed", payment_intent(pi, booking_id, amount, status="requires_payment_method"))) == "processed"
    assert state(db, booking_id) == "payment_failed"
    assert ingest(shim, event("payment_intent.succeeded", payment_intent(pi, booking_id, amount))) == "processed"
    assert ingest(shim, event("payment_intent.payment_failed", payment_intent(pi, booking_id, amount, status="requires_payment_method"))) == "processed"
    assert state(db, booking_id) == "confirmed"


def test_a_canceled_payment_cancels_the_booking_and_frees_the_units(db, app, shim):
    inventory, booking_id, amount, _ = booking(app)
    assert ingest(shim, event("payment_intent.canceled", payment_intent("pi_c", booking_id, amount, status="canceled"))) == "processed"
    assert state(db, booking_id) == "cancelled"
    assert app.execute("SELECT * FROM api.availability(%s)", (inventory,)).fetchone() == (10, 0, 0, 10)


def test_a_late_payment_takes_the_units_again_when_they_are_there(db, app, shim):
    inventory, booking_id, amount, expires_at = booking(app, ttl="1 second")
    wait_past(app, expires_at)
    db.one("CALL booking.sweep_expired_holds()")
    assert state(db, booking_id) == "expired"
    assert ingest(shim, event("payment_intent.succeeded", payment_intent("pi_late", booking_id, amount))) == "processed"
    assert state(db, booking_id) == "confirmed"
    assert app.execute("SELECT * FROM api.availability(%s)", (inventory,)).fetchone() == (10, 2, 0, 8)
    assert ledger(db, booking_id) == (amount, 0, 0, amount)
    assert db.rows("SELECT count(*) FROM ops.oversold_inventory") == [(0,)]


def test_a_late_payment_without_units_is_unallocated_and_goes_back(db, app, shim):
    inventory, booking_id, amount, expires_at = booking(app, capacity=2, ttl="1 second")
    wait_past(app, expires_at)
    place(app, inventory, 2, holder="bob")  # reclaims the dead hold: sold out now
    assert ingest(shim, event("payment_intent.succeeded", payment_intent("pi_nocap", booking_id, amount))) == "processed"
    assert state(db, booking_id) == "refund_pending"
    balances = dict(((a, c), b) for a, c, b in db.rows("SELECT * FROM ops.ledger_balances"))
    assert balances[("unallocated_receipts", "usd")] == -amount
    assert db.one("SELECT count(*) FROM jobs.jobs WHERE kind = 'stripe.refund'") == 1
    assert app.execute("SELECT * FROM api.availability(%s)", (inventory,)).fetchone() == (2, 0, 2, 0)
    # The refund arrives: the booking is refunded, nothing is owed any more.
    assert ingest(shim, event("refund.updated", refund("re_nocap", "pi_nocap", amount))) == "processed"
    assert state(db, booking_id) == "refunded"
    balances = dict(((a, c), b) for a, c, b in db.rows("SELECT * FROM ops.ledger_balances"))
    assert balances[("unallocated_receipts", "usd")] == 0 and balances[("cash_at_stripe", "usd")] == 0


def test_a_refund_before_its_payment_is_deferred_then_applied_by_the_retry_job(db, app, shim):
    _, booking_id, amount, _ = booking(app)
    early = event("refund.created", refund("re_1", "pi_r", 1000))
    assert ingest(shim, early) == "deferred"
    assert db.rows("SELECT status, attempts FROM ops.stripe_events WHERE event_id = %s", (early["id"],)) == [("deferred", 1)]
    assert ingest(shim, event("payment_intent.succeeded", payment_intent("pi_r", booking_id, amount))) == "processed"
    db.one("UPDATE stripe.events SET next_attempt_at = now() - interval '1 second' WHERE status = 'deferred' RETURNING 1")
    assert db.one("SELECT core.run_cron_job('booking-retry-stripe-events')") == {"processed": 1}
    assert state(db, booking_id) == "partially_refunded"
    assert ingest(shim, event("charge.refunded", {"id": "ch_1", "object": "charge", "payment_intent": "pi_r",
                                                  "refunds": {"data": [refund("re_1", "pi_r", 1000),
                                                                       refund("re_2", "pi_r", amount - 1000)]}})) == "processed"
    assert state(db, booking_id) == "refunded"
    assert ledger(db, booking_id) == (amount, amount, 0, 0)
    assert db.one("SELECT count(*) FROM ledger.transactions WHERE kind = 'refund'") == 2


def test_disputes_open_and_close(db, app, shim):
    _, won_booking, amount, _ = booking(app)
    ingest(shim, event("payment_intent.succeeded", payment_intent("pi_d1", won_booking, amount)))
    closed_early = event("charge.dispute.closed", dispute("dp_1", "pi_d1", amount, status="won"))
    assert ingest(shim, closed_early) == "deferred"  # closed before created
    assert ingest(shim, event("charge.dispute.created", dispute("dp_1", "pi_d1", amount))) == "processed"
    assert state(db, won_booking) == "disputed"
    assert ledger(db, won_booking) == (amount, 0, amount, 0)
    assert db.one("SELECT ops.replay_stripe_event(%s)", (closed_early["id"],)) == "processed"
    assert state(db, won_booking) == "confirmed"
    assert ledger(db, won_booking) == (amount, 0, 0, amount)

    _, lost_booking, amount, _ = booking(app)
    ingest(shim, event("payment_intent.succeeded", payment_intent("pi_d2", lost_booking, amount)))
    ingest(shim, event("charge.dispute.created", dispute("dp_2", "pi_d2", amount)))
    assert ingest(shim, event("charge.dispute.closed", dispute("dp_2", "pi_d2", amount, status="lost"))) == "processed"
    assert state(db, lost_booking) == "refunded"
    assert ledger(db, lost_booking) == (amount, 0, amount, 0)
    assert db.rows("SELECT * FROM ops.ledger_imbalances") == []


def test_a_second_payment_for_a_paid_booking_goes_back(db, app, shim):
    _, booking_id, amount, _ = booking(app)
    ingest(shim, event("payment_intent.succeeded", payment_intent("pi_a", booking_id, amount)))
    assert ingest(shim, event("payment_intent.succeeded", payment_intent("pi_b", booking_id, amount))) == "processed"
    assert state(db, booking_id) == "confirmed"
    assert db.rows("SELECT payload ->> 'payment_intent_id' FROM jobs.jobs WHERE kind = 'stripe.refund'") == [("pi_b",)]
    assert ingest(shim, event("refund.created", refund("re_b", "pi_b", amount))) == "processed"
    assert state(db, booking_id) == "confirmed"  # the refund of the duplicate leaves the booking paid


def test_other_mode_or_unknown_bookings_are_stored_and_ignored(db, app, shim):
    _, booking_id, amount, _ = booking(app)
    live = event("payment_intent.succeeded", payment_intent("pi_live", booking_id, amount), livemode=True)
    assert ingest(shim, live) == "ignored"
    stranger = event("payment_intent.succeeded", payment_intent("pi_x", uuid.uuid4(), 100))
    stranger["data"]["object"]["metadata"] = {}
    assert ingest(shim, stranger) == "ignored"
    assert ingest(shim, event("customer.created", {"id": "cus_1", "object": "customer"})) == "ignored"
    assert state(db, booking_id) == "pending_payment"
    assert db.one("SELECT count(*) FROM ops.stripe_events") == 3


def test_a_payment_of_another_amount_fails_with_rx001_and_is_kept_for_retry(db, app, shim):
    _, booking_id, amount, _ = booking(app)
    evt = event("payment_intent.succeeded", payment_intent("pi_wrong", booking_id, amount + 1))
    assert sqlstate_of(shim, "SELECT api.ingest_stripe_event(%s)", (Jsonb(evt),)) == "RX001"
    assert db.one("SELECT count(*) FROM stripe.events") == 0  # rolled back: the shim records the failure


def test_payment_intent_params_and_record(db, app, shim):
    _, booking_id, amount, _ = booking(app)
    params = shim.execute("SELECT api.payment_intent_params(%s)", (booking_id,)).fetchone()[0]
    assert params == {"amount": amount, "currency": "usd", "metadata": {"booking_id": str(booking_id)}}
    shim.execute("SELECT api.record_payment_intent(%s, 'pi_rec', 'pi_rec_secret_x', 'requires_payment_method')",
                (booking_id,))
    assert db.one("SELECT payment_intent_id FROM booking.bookings") == "pi_rec"
    # A payment found through the recorded PaymentIntent (no metadata).
    obj = payment_intent("pi_rec", booking_id, amount)
    obj["metadata"] = {}
    assert ingest(shim, event("payment_intent.succeeded", obj)) == "processed"
    assert state(db, booking_id) == "confirmed"
    assert sqlstate_of(shim, "SELECT api.payment_intent_params(%s)", (booking_id,)) == "RB002"
    assert sqlstate_of(shim, "SELECT api.payment_intent_params(%s)", (uuid.uuid4(),)) == "RB005"
    assert sqlstate_of(shim, "SELECT api.record_payment_intent(%s, 'pi', 's', 'x')", (uuid.uuid4(),)) == "RB005"
    assert sqlstate_of(app, "SELECT ops.replay_stripe_event('evt_nope')") in ("42501",)  # app may not replay


def test_replay_of_an_unknown_event_is_rb005(db):
    with connect(db.ops_url) as conn:
        assert sqlstate_of(conn, "SELECT ops.replay_stripe_event('evt_nope')") == "RB005"


# --- api.ingest_stripe_events: group commit --------------------------------------------

def ingest_batch(conn, events, correlation_ids=None):
    return conn.execute("SELECT api.ingest_stripe_events(%s, %s)", (Jsonb(events), correlation_ids)).fetchone()[0]


def test_a_batch_applies_each_event_as_alone_and_answers_in_the_order_given(db, app, shim):
    _, paid, amount, _ = booking(app)
    _, failed, amount2, _ = booking(app)
    pay = event("payment_intent.succeeded", payment_intent("pi_batch_1", paid, amount))
    fail = event("payment_intent.payment_failed",
                 payment_intent("pi_batch_2", failed, amount2, status="requires_payment_method"))
    ping = event()
    outcomes = ingest_batch(shim, [ping, pay, fail, pay], ["req-a", "req-b", "req-c", "req-d"])
    assert outcomes == ["ignored", "processed", "processed", "duplicate"]
    assert (state(db, paid), state(db, failed)) == ("confirmed", "payment_failed")
    assert ledger(db, paid) == (amount, 0, 0, amount)
    assert db.one("SELECT count(*) FROM jobs.jobs WHERE kind = 'email.booking_confirmed'") == 1
    # Each event keeps its own request's correlation id, in stripe.events and in the history.
    assert dict(db.rows("SELECT event_id, correlation_id FROM stripe.events")) == {
        ping["id"]: "req-a", pay["id"]: "req-b", fail["id"]: "req-c"}
    assert db.one("SELECT correlation_id FROM booking.booking_history WHERE booking_id = %s AND event = 'payment_failed'",
                  (failed,)) == "req-c"
    # One transaction for all of them.
    assert db.one("SELECT count(DISTINCT xmin::text) FROM stripe.events") == 1


def test_a_batch_with_one_bad_event_writes_nothing(db, app, shim):
    _, booking_id, amount, _ = booking(app)
    pay = event("payment_intent.succeeded", payment_intent("pi_batch_bad", booking_id, amount))
    not_an_event = {"id": "evt_x", "object": "charge"}
    wrong_amount = event("payment_intent.succeeded", payment_intent("pi_batch_bad_2", booking_id, amount + 1))
    for bad, sqlstate in ((not_an_event, "RW001"), (wrong_amount, "RX001")):
        assert sqlstate_of(shim, "SELECT api.ingest_stripe_events(%s)", (Jsonb([pay, bad]),)) == sqlstate
    assert db.one("SELECT count(*) FROM stripe.events") == 0
    assert state(db, booking_id) == "pending_payment"
    assert db.one("SELECT count(*) FROM ledger.transactions") == 0


BAD_BATCHES = {
    "not an array": ("{}", None),
    "empty": ("[]", None),
    "101 events": (Jsonb([event() for _ in range(101)]), None),
    "fewer correlation ids": (Jsonb([event(), event()]), ["req-1"]),
    "NULL": (None, None),
}


@pytest.mark.parametrize("events, correlation_ids", BAD_BATCHES.values(), ids=BAD_BATCHES.keys())
def test_a_malformed_batch_is_22023_and_writes_nothing(db, app, shim, events, correlation_ids):
    assert sqlstate_of(shim, "SELECT api.ingest_stripe_events(%s::jsonb, %s)", (events, correlation_ids)) == "22023"
    assert db.one("SELECT count(*) FROM stripe.events") == 0


def test_two_batches_of_the_same_payments_in_opposite_orders_do_not_deadlock(db, app, shim):
    """Each batch applies its events in one order (the payment, then the event id), so two
    batches that share bookings lock them in the same order: the second waits, never
    deadlocks. Without that order, batch A holding its first bookings would wait for B's
    and B for A's."""
    for round_ in range(3):
        events = []
        for i in range(12):
            _, booking_id, amount, _ = booking(app)
            events.append(event("payment_intent.succeeded", payment_intent(f"pi_order_{round_}_{i}", booking_id, amount)))
        batches = [events, list(reversed(events))] * 2
        outcomes, errors = on_connections(db.shim_url, len(batches), lambda c: ingest_batch(c, batches.pop()))
        assert errors == [], errors
        # Each event applied once, by whichever batch came first; the others found it stored.
        applied = sorted(o for batch in outcomes for o in batch)
        assert applied == ["duplicate"] * (3 * len(events)) + ["processed"] * len(events)
    assert db.one("SELECT count(*) FROM ledger.transactions") == 36
    assert db.one("SELECT count(*) FROM booking.bookings WHERE status = 'confirmed'") == 36
