"""Hostile input to the SQL api (issue 12): money in another currency than its booking's is
never applied, bad values are contract codes (RW001 for an event, class 22 for an
argument) and never a raw constraint error or RX001, and nothing is half-written. Each
test compares exact row counts before and after."""

from __future__ import annotations

import uuid

import pytest
from psycopg.types.json import Jsonb

from tests.sql.helpers import new_inventory, place, sqlstate_of
from tests.stripe_events import dispute, event, payment_intent, refund

TABLES = ("stripe.events", "ledger.transactions", "ledger.lines", "booking.booking_history", "jobs.jobs",
          "core.errors", "core.error_groups", "core.refresh_tokens")


def counts(db) -> dict:
    return {t: db.one(f"SELECT count(*) FROM {t}") for t in TABLES}


def ingest(conn, evt):
    return conn.execute("SELECT api.ingest_stripe_event(%s)", (Jsonb(evt),)).fetchone()[0]


def new_booking(app, amount=600, currency="usd"):
    inventory = new_inventory(app, 10, amount=amount, currency=currency)
    hold, _ = place(app, inventory, 2)
    answer = app.execute("SELECT api.create_booking(%s, 'alice', %s::uuid[])", (uuid.uuid4().hex, [hold])).fetchone()[0]
    return answer["booking_id"], answer["amount"]


def paid_booking(app, shim):
    booking_id, amount = new_booking(app)
    pi = "pi_" + uuid.uuid4().hex[:12]
    assert ingest(shim, event("payment_intent.succeeded", payment_intent(pi, booking_id, amount))) == "processed"
    return booking_id, amount, pi


def booking_view(app, booking_id):
    view = app.execute("SELECT api.get_booking(%s)", (booking_id,)).fetchone()[0]
    return view["status"], view["amount_refunded"], view["amount_paid"]


def ledger_of(db, booking_id):
    return db.rows("SELECT kind, currency, amount FROM ledger.transactions WHERE booking_id = %s ORDER BY txn_id",
                   (booking_id,))


def critical_errors(db):
    return db.rows("SELECT source, message, context ->> 'booking_id' FROM core.errors WHERE severity = 'critical'")


# --- money in another currency than its booking's ----------------------------------------

def test_a_refund_in_another_currency_is_stored_ignored_with_a_critical_error_and_not_applied(db, app, shim):
    booking_id, amount, pi = paid_booking(app, shim)  # 1,200 usd
    assert amount == 1200
    before, view, books = counts(db), booking_view(app, booking_id), ledger_of(db, booking_id)
    evt = event("refund.created", refund("re_eur", pi, amount, currency="eur"))
    assert ingest(shim, evt) == "ignored"
    assert db.one("SELECT status FROM stripe.events WHERE event_id = %s", (evt["id"],)) == "ignored"
    assert booking_view(app, booking_id) == view and view[0] == "confirmed"
    assert ledger_of(db, booking_id) == books == [("charge", "usd", 1200)]
    assert db.one("SELECT count(*) FROM ledger.transactions WHERE currency <> 'usd'") == 0
    after = counts(db)
    # The event row, one critical error (new group) and its alert job; nothing else.
    assert {t: after[t] - before[t] for t in TABLES} == {
        "stripe.events": 1, "ledger.transactions": 0, "ledger.lines": 0, "booking.booking_history": 0,
        "jobs.jobs": 1, "core.errors": 1, "core.error_groups": 1, "core.refresh_tokens": 0}
    [(source, message, about)] = critical_errors(db)
    assert (source, about) == ("stripe.refund", str(booking_id))
    assert "re_eur" in message and "eur" in message and "usd" in message
    assert db.one("SELECT count(*) FROM jobs.jobs WHERE kind = 'alert.notify'") == 1
    # A redelivery is a duplicate, and the same refund inside charge.refunded is ignored too.
    assert ingest(shim, evt) == "duplicate"
    charge = {"id": "ch_1", "object": "charge", "payment_intent": pi,
              "refunds": {"data": [refund("re_eur_2", pi, amount, currency="eur")]}}
    assert ingest(shim, event("charge.refunded", charge)) == "ignored"
    assert ledger_of(db, booking_id) == books


@pytest.mark.parametrize("currency", ["zzz", "", "u", "U" * 10_000, None, 840])
def test_a_refund_event_with_a_currency_stripe_has_not_is_rw001_and_stores_nothing(db, app, shim, currency):
    booking_id, amount, pi = paid_booking(app, shim)
    before = counts(db)
    obj = refund("re_bad", pi, amount)
    obj["currency"] = currency
    assert sqlstate_of(shim, "SELECT api.ingest_stripe_event(%s)", (Jsonb(event("refund.created", obj)),)) == "RW001"
    # In a group commit too, with a good event beside it: all of it rolls back.
    batch = [event(), event("refund.updated", obj)]
    assert sqlstate_of(shim, "SELECT api.ingest_stripe_events(%s)", (Jsonb(batch),)) == "RW001"
    assert counts(db) == before
    assert booking_view(app, booking_id)[0] == "confirmed"


@pytest.mark.parametrize("amount", [-5, 0, "1200", 12.5, None, 10 ** 20])
def test_a_refund_event_with_a_bad_amount_is_rw001_and_stores_nothing(db, app, shim, amount):
    booking_id, _, pi = paid_booking(app, shim)
    before = counts(db)
    obj = refund("re_bad_amount", pi, 1)
    obj["amount"] = amount
    assert sqlstate_of(shim, "SELECT api.ingest_stripe_event(%s)", (Jsonb(event("refund.created", obj)),)) == "RW001"
    assert counts(db) == before


@pytest.mark.parametrize("currency", ["eur", "zzz", "", "u", "u" * 10_000, None])
def test_record_stripe_refund_with_a_foreign_or_bad_currency_is_22023_and_writes_nothing(db, app, shim, worker,
                                                                                          currency):
    booking_id, amount, pi = paid_booking(app, shim)
    before, view = counts(db), booking_view(app, booking_id)
    obj = refund("re_worker", pi, amount)
    obj["currency"] = currency
    assert sqlstate_of(worker, "SELECT api.record_stripe_refund(%s)", (Jsonb(obj),)) == "22023"
    assert counts(db) == before
    assert booking_view(app, booking_id) == view
    # The same refund in the booking's currency is booked.
    obj["currency"] = "usd"
    assert worker.execute("SELECT api.record_stripe_refund(%s)", (Jsonb(obj),)).fetchone()[0] == "processed"
    assert booking_view(app, booking_id)[0] == "refunded"


@pytest.mark.parametrize("amount", [-5, 0, "1200", None])
def test_record_stripe_refund_with_a_bad_amount_is_22023(db, app, shim, worker, amount):
    _, _, pi = paid_booking(app, shim)
    before = counts(db)
    obj = refund("re_worker_amount", pi, 1)
    obj["amount"] = amount
    assert sqlstate_of(worker, "SELECT api.record_stripe_refund(%s)", (Jsonb(obj),)) == "22023"
    assert counts(db) == before


def test_a_dispute_in_another_currency_is_ignored_with_a_critical_error(db, app, shim):
    booking_id, amount, pi = paid_booking(app, shim)
    before, books = counts(db), ledger_of(db, booking_id)
    evt = event("charge.dispute.created", dispute("dp_gbp", pi, amount, currency="gbp"))
    assert ingest(shim, evt) == "ignored"
    assert booking_view(app, booking_id)[0] == "confirmed"
    assert ledger_of(db, booking_id) == books
    after = counts(db)
    assert (after["stripe.events"] - before["stripe.events"], after["core.errors"] - before["core.errors"],
            after["ledger.transactions"] - before["ledger.transactions"]) == (1, 1, 0)
    assert [s for s, _, _ in critical_errors(db)] == ["stripe.dispute"]
    closed = event("charge.dispute.closed", dispute("dp_gbp", pi, amount, currency="gbp", status="won"))
    assert ingest(shim, closed) == "ignored"  # in gbp too: never applied, never waited for
    assert ledger_of(db, booking_id) == books
    assert booking_view(app, booking_id)[0] == "confirmed"


@pytest.mark.parametrize("currency", ["zzz", "", None])
def test_a_dispute_with_a_bad_currency_is_rw001(db, app, shim, currency):
    _, amount, pi = paid_booking(app, shim)
    before = counts(db)
    obj = dispute("dp_bad", pi, amount)
    obj["currency"] = currency
    assert sqlstate_of(shim, "SELECT api.ingest_stripe_event(%s)",
                       (Jsonb(event("charge.dispute.created", obj)),)) == "RW001"
    assert counts(db) == before


@pytest.mark.parametrize("kind", ["payment_intent.succeeded", "checkout.session.completed"])
def test_a_payment_in_another_currency_does_not_confirm(db, app, shim, kind):
    booking_id, amount = new_booking(app)
    before = counts(db)
    pi = "pi_" + uuid.uuid4().hex[:12]
    if kind == "payment_intent.succeeded":
        obj = payment_intent(pi, booking_id, amount, currency="eur")
    else:
        obj = {"id": "cs_" + pi, "object": "checkout.session", "payment_status": "paid", "payment_intent": pi,
               "amount_total": amount, "currency": "eur", "metadata": {"booking_id": str(booking_id)}}
    evt = event(kind, obj)
    assert ingest(shim, evt) == "ignored"
    assert db.one("SELECT status FROM stripe.events WHERE event_id = %s", (evt["id"],)) == "ignored"
    assert booking_view(app, booking_id)[0] == "pending_payment"
    after = counts(db)
    assert {t: after[t] - before[t] for t in TABLES} == {
        "stripe.events": 1, "ledger.transactions": 0, "ledger.lines": 0, "booking.booking_history": 0,
        "jobs.jobs": 1, "core.errors": 1, "core.error_groups": 1, "core.refresh_tokens": 0}
    assert [s for s, _, _ in critical_errors(db)] == ["stripe.payment"]
    # The payment in the right currency still confirms it.
    assert ingest(shim, event("payment_intent.succeeded", payment_intent(pi + "_usd", booking_id, amount))) == "processed"
    assert booking_view(app, booking_id)[0] == "confirmed"


# --- bad values are RW001 before any comparison (never RX001) ----------------------------

BAD_PAYMENTS = {
    "amount_received -5": {"amount_received": -5},
    "amount_received 0": {"amount_received": 0},
    "amount_received a string": {"amount_received": "1200"},
    "amount_received 12.5": {"amount_received": 12.5},
    "amount_received huge": {"amount_received": 10 ** 30},
    "no amount at all": {"amount_received": None, "amount": None},
    "currency zzz": {"currency": "zzz"},
    "currency empty": {"currency": ""},
    "currency null": {"currency": None},
    "currency a number": {"currency": 840},
    "currency 10,000 characters": {"currency": "u" * 10_000},
}


@pytest.mark.parametrize("change", BAD_PAYMENTS.values(), ids=BAD_PAYMENTS.keys())
def test_a_payment_with_bad_values_is_rw001_and_stores_nothing(db, app, shim, change):
    booking_id, amount = new_booking(app)
    before = counts(db)
    obj = payment_intent("pi_bad_" + uuid.uuid4().hex[:8], booking_id, amount) | change
    evt = event("payment_intent.succeeded", obj)
    assert sqlstate_of(shim, "SELECT api.ingest_stripe_event(%s)", (Jsonb(evt),)) == "RW001"
    assert sqlstate_of(shim, "SELECT api.ingest_stripe_events(%s)", (Jsonb([event(), evt]),)) == "RW001"
    assert counts(db) == before
    assert booking_view(app, booking_id)[0] == "pending_payment"


# --- raw constraint errors become contract codes ------------------------------------------

def test_issuing_a_refresh_token_hash_twice_is_22023_and_writes_nothing(db, app):
    token_hash = bytes(range(32))
    app.execute("SELECT api.issue_refresh_token('user-a', %s)", (token_hash,))
    before = counts(db)
    for user in ("user-a", "user-b"):
        assert sqlstate_of(app, "SELECT api.issue_refresh_token(%s, %s)", (user, token_hash)) == "22023"
    assert counts(db) == before
    assert db.one("SELECT user_id FROM core.refresh_tokens WHERE token_hash = %s", (token_hash,)) == "user-a"


def test_rotating_to_a_hash_that_exists_is_22023_and_half_writes_nothing(db, app, shim):
    first, other = b"\x01" * 32, b"\x02" * 32
    app.execute("SELECT api.issue_refresh_token('user-a', %s)", (first,))
    app.execute("SELECT api.issue_refresh_token('user-b', %s)", (other,))
    snapshot = "SELECT token_hash, rotated_at, replaced_by, revoked_at FROM core.refresh_tokens ORDER BY token_hash"
    before, rows = counts(db), db.rows(snapshot)
    for new in (other, first):  # another user's live token, or the old one itself
        assert sqlstate_of(shim, "SELECT * FROM api.rotate_refresh_token(%s, %s)", (first, new)) == "22023"
    assert counts(db) == before
    assert db.rows(snapshot) == rows  # the old token was not marked rotated
    # It still rotates to a fresh hash.
    assert shim.execute("SELECT outcome FROM api.rotate_refresh_token(%s, %s)", (first, b"\x03" * 32)).fetchone()[0] \
        == "rotated"


def test_recording_another_bookings_payment_intent_is_22023_and_writes_nothing(db, app, shim):
    first, _ = new_booking(app)
    second, _ = new_booking(app)
    shim.execute("SELECT api.record_payment_intent(%s, 'pi_taken', 'pi_taken_secret', 'requires_payment_method')",
                 (first,))
    shim.execute("SELECT api.record_payment_intent(%s, 'pi_second', 'pi_second_secret', 'requires_payment_method')",
                 (second,))
    snapshot = "SELECT booking_id, payment_intent_id, payment_intent_status FROM booking.bookings ORDER BY 1"
    before, rows = counts(db), db.rows(snapshot)
    assert sqlstate_of(shim, "SELECT api.record_payment_intent(%s, 'pi_taken', 's', 'succeeded')", (second,)) == "22023"
    assert counts(db) == before
    assert db.rows(snapshot) == rows
    # Recording its own PaymentIntent again is fine (the latest status).
    shim.execute("SELECT api.record_payment_intent(%s, 'pi_taken', 's', 'processing')", (first,))
    assert db.one("SELECT payment_intent_status FROM booking.bookings WHERE booking_id = %s", (first,)) == "processing"
