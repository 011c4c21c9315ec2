"""Regression tests for what the fuzzers of tests/fuzz found (one test per finding)."""

from __future__ import annotations

import uuid

from psycopg.types.json import Jsonb

from tests.fuzz.sqlfuzz import count_query
from tests.pg import connect
from tests.sql.helpers import new_inventory, place, sqlstate_of
from tests.stripe_events import dispute, event, payment_intent, refund


def paid_booking(db, amount=2500):
    """A confirmed booking paid by PaymentIntent pi; returns (booking_id, pi)."""
    with connect(db.app_url) as app, connect(db.shim_url) as shim:
        inv = new_inventory(app, amount=amount)
        hold_id, _ = place(app, inv, 1)
        booking_id = app.execute("SELECT api.create_booking(%s, 'alice', %s)",
                                 ("k-" + uuid.uuid4().hex, [hold_id])).fetchone()[0]["booking_id"]
        pi = "pi_" + uuid.uuid4().hex[:12]
        shim.execute("SELECT api.record_payment_intent(%s, %s, 'secret', 'requires_payment_method')", (booking_id, pi))
        evt = event("payment_intent.succeeded", payment_intent(pi, booking_id, amount))
        assert shim.execute("SELECT api.ingest_stripe_event(%s)", (Jsonb(evt),)).fetchone()[0] == "processed"
    return booking_id, pi


def test_a_refund_id_recorded_again_with_other_figures_is_22023_and_writes_nothing(db):
    # Found by tests/fuzz/test_sql_fuzz.py: api.record_stripe_refund raised RX001 (an
    # invariant broke: a 500 and an alert) for a refund id already booked with another
    # amount, i.e. for a bad argument of its caller.
    booking_id, pi = paid_booking(db)
    _, other_pi = paid_booking(db)
    with connect(db.worker_url) as worker, connect(db.url) as admin:
        counts = count_query(admin)
        first = refund("re_" + uuid.uuid4().hex[:12], pi, 100)
        assert worker.execute("SELECT api.record_stripe_refund(%s)", (Jsonb(first),)).fetchone()[0] == "processed"
        before = admin.execute(counts).fetchone()[0]
        for changed in ({"amount": 200}, {"currency": "eur"}, {"payment_intent": other_pi}):
            again = {**first, **changed}
            assert sqlstate_of(worker, "SELECT api.record_stripe_refund(%s)", (Jsonb(again),)) == "22023", changed
            assert admin.execute(counts).fetchone()[0] == before, changed
        # The same refund again is a harmless repeat: booked once, and (found while writing
        # this test) no second 'partial_refund' row in the booking's history.
        worker.execute("SELECT api.record_stripe_refund(%s)", (Jsonb(first),))
        assert admin.execute(counts).fetchone()[0] == before
        assert admin.execute("SELECT count(*) FROM ledger.transactions WHERE stripe_object_id = %s",
                             (first["id"],)).fetchone()[0] == 1
        assert admin.execute("SELECT NOT EXISTS (SELECT FROM ops.ledger_imbalances)").fetchone()[0]


def test_a_refund_or_dispute_announced_again_with_other_figures_is_stored_ignored_not_rx001(db):
    # Found by tests/fuzz/test_sql_fuzz.py (FUZZ_FUNCTIONS=ingest_stripe_events): a new event
    # announcing a dispute already booked, with another amount, raised ledger.post's RX001
    # (a 500, retried 20 times). Like money in another currency: stored 'ignored', nothing
    # booked, the booking unchanged, one critical error.
    booking_id, pi = paid_booking(db)
    re_id, dp_id = "re_" + uuid.uuid4().hex[:12], "dp_" + uuid.uuid4().hex[:12]
    with connect(db.shim_url) as shim, connect(db.url) as admin:
        def ingest(evt):
            return shim.execute("SELECT api.ingest_stripe_event(%s)", (Jsonb(evt),)).fetchone()[0]

        assert ingest(event("refund.created", refund(re_id, pi, 100))) == "processed"
        assert ingest(event("charge.dispute.created", dispute(dp_id, pi, 50))) == "processed"
        assert ingest(event("charge.dispute.closed", dispute(dp_id, pi, 50, status="won"))) == "processed"
        ledger = admin.execute("SELECT count(*), sum(amount) FROM ledger.transactions").fetchone()
        state = admin.execute("SELECT status, version FROM booking.bookings WHERE booking_id = %s", (booking_id,)).fetchone()
        criticals = admin.execute("SELECT count(*) FROM core.errors WHERE severity = 'critical'").fetchone()[0]
        again = [
            event("refund.updated", refund(re_id, pi, 150)),
            event("charge.dispute.created", dispute(dp_id, pi, 60)),
            event("charge.dispute.closed", dispute(dp_id, pi, 70, status="won")),
        ]
        for evt in again:
            assert ingest(evt) == "ignored", evt["type"]
            assert admin.execute("SELECT status FROM stripe.events WHERE event_id = %s", (evt["id"],)).fetchone()[0] == "ignored"
        assert admin.execute("SELECT count(*), sum(amount) FROM ledger.transactions").fetchone() == ledger
        assert admin.execute("SELECT status, version FROM booking.bookings WHERE booking_id = %s",
                             (booking_id,)).fetchone() == state
        assert admin.execute("SELECT count(*) FROM core.errors WHERE severity = 'critical'").fetchone()[0] >= criticals + 1
        assert admin.execute("SELECT NOT EXISTS (SELECT FROM ops.ledger_imbalances)").fetchone()[0]
