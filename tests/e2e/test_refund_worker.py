"""The stripe.refund job against localstripe: one refund, even when the worker is killed
between Stripe's answer and the database's."""

from __future__ import annotations

import signal
import time
import uuid

import stripe
from psycopg.types.json import Jsonb

from tests.conftest import LOCALSTRIPE_API_KEY
from tests.e2e import fault_worker
from tests.e2e.workers import start_worker
from tests.pg import connect, wait_until
from tests.stripe_events import event


def paid_then_cancelled(db, client) -> tuple[str, str, int]:
    """A booking paid with a real (local) PaymentIntent, then cancelled: refund_pending."""
    with connect(db.app_url) as conn:
        inventory = conn.execute("SELECT api.create_inventory(%s, 10, 3000, 'usd')",
                                 (f"r-{uuid.uuid4().hex[:8]}",)).fetchone()[0]
        hold = conn.execute("SELECT hold_id FROM api.place_hold(%s, 2, 'alice')", (inventory,)).fetchone()[0]
        booking = conn.execute("SELECT api.create_booking(%s, 'alice', ARRAY[%s::uuid])",
                               (uuid.uuid4().hex, hold)).fetchone()[0]
    method = client.v1.payment_methods.create(params={
        "type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
    intent = client.v1.payment_intents.create(params={
        "amount": booking["amount"], "currency": "usd", "metadata": {"booking_id": booking["booking_id"]},
        "payment_method": method.id, "confirm": True})
    assert intent.status == "succeeded"
    obj = intent.to_dict()
    obj["amount_received"] = booking["amount"]
    with connect(db.shim_url) as conn:
        assert conn.execute("SELECT api.ingest_stripe_event(%s)",
                            (Jsonb(event("payment_intent.succeeded", obj)),)).fetchone()[0] == "processed"
    with connect(db.app_url) as conn:
        assert conn.execute("SELECT api.cancel_booking(%s, 'customer asked')",
                            (booking["booking_id"],)).fetchone()[0] == "refund_pending"
    return booking["booking_id"], intent.id, booking["amount"]


def worker(db, localstripe, **options):
    return start_worker(db.worker_url, STRIPE_API_KEY=LOCALSTRIPE_API_KEY, STRIPE_API_BASE=localstripe, **options)


def test_a_worker_killed_after_stripe_refunded_is_taken_over_and_refunds_once(db, localstripe):
    client = stripe.StripeClient(LOCALSTRIPE_API_KEY, base_addresses={"api": localstripe}, max_network_retries=0)
    booking_id, intent_id, amount = paid_then_cancelled(db, client)

    def refunds():
        return client.v1.refunds.list(params={"payment_intent": intent_id}).data

    # Paused after Stripe refunded, before the database records it.
    first = worker(db, localstripe, command=[*fault_worker.COMMAND, "30"], WORKER_LEASE_S="2")
    try:
        assert wait_until(lambda: len(refunds()) == 1, 30), "the first worker never refunded"
        first.send_signal(signal.SIGKILL)  # Stripe refunded; the database does not know yet
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    assert db.one("SELECT status FROM booking.bookings") == "refund_pending"

    second = worker(db, localstripe, WORKER_LEASE_S="2")
    try:
        assert wait_until(lambda: db.one("SELECT status FROM jobs.jobs WHERE kind = 'stripe.refund'") == "done", 30)
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)
    assert len(refunds()) == 1 and refunds()[0].amount == amount
    result = db.one("SELECT result FROM jobs.jobs WHERE kind = 'stripe.refund'")
    assert result["refunds"][0]["reused"] is True
    assert db.one("SELECT status FROM booking.bookings") == "refunded"
    assert db.rows("SELECT paid, refunded FROM ops.booking_ledger") == [(amount, amount)]
    assert db.one("SELECT attempts FROM jobs.jobs WHERE kind = 'stripe.refund'") == 2


def test_reconciliation_finds_a_planted_mismatch_and_no_false_ones(db, localstripe):
    client = stripe.StripeClient(LOCALSTRIPE_API_KEY, base_addresses={"api": localstripe}, max_network_retries=0)
    # Everything localstripe holds so far, except what this test plants, is not in this
    # database's ledger: reconcile a window that starts now.
    with connect(db.url) as conn:
        start = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    time.sleep(1.1)  # Stripe's created times are whole seconds
    booking_id, intent_id, amount = paid_then_cancelled(db, client)  # booked: no mismatch
    proc = worker(db, localstripe)
    try:
        assert wait_until(lambda: db.one("SELECT status FROM jobs.jobs WHERE kind = 'stripe.refund'") == "done", 30)
        # Planted: a payment Stripe took whose webhook never arrived.
        method = client.v1.payment_methods.create(params={
            "type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
        lost = client.v1.payment_intents.create(params={"amount": 777, "currency": "usd", "payment_method": method.id,
                                                        "confirm": True})
        time.sleep(1.1)
        with connect(db.url) as conn:
            end = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            conn.execute("SELECT jobs.enqueue('stripe.reconcile', %s)",
                         (Jsonb({"window_start": start.isoformat(), "window_end": end.isoformat()}),))
        assert wait_until(lambda: db.one("SELECT status FROM jobs.jobs WHERE kind = 'stripe.reconcile'") == "done", 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    result = db.one("SELECT result FROM jobs.jobs WHERE kind = 'stripe.reconcile'")
    assert result["mismatches"] == 1 and result["checked"] >= 3  # the good charge, its refund, the lost one
    assert db.rows("SELECT problem, kind, stripe_object_id, stripe_amount FROM ops.reconciliation_mismatches") == [
        ("missing_in_ledger", "charge", lost.id, 777)]
    assert db.one("SELECT count(*) FROM ops.open_errors WHERE source = 'reconciliation' "
                         "AND severity = 'critical'") == 1
