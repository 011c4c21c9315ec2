"""End to end against localstripe on 127.0.0.1: hold, booking, POST /payment-intents,
a confirmation with a test card, localstripe's own signed webhook, the booking confirmed."""

from __future__ import annotations

import threading
import uuid

import httpx
import pytest
import stripe

from tests.conftest import LOCALSTRIPE_API_KEY
from tests.pg import connect, wait_until
from tests.shim.server import shim

SECRET = "whsec_localstripe_e2e_0123456789"
API_KEY = LOCALSTRIPE_API_KEY


@pytest.fixture(scope="module")
def server(module_db, localstripe, tmp_path_factory):
    log = tmp_path_factory.mktemp("shim") / "shim.log"
    with shim(module_db.shim_url, SECRET, log=log,
              extra_env={"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": localstripe}) as base:
        httpx.post(f"{localstripe}/_config/webhooks/shim", data={
            "url": base + "/webhooks/stripe", "secret": SECRET,
            "events[]": ["payment_intent.succeeded", "payment_intent.payment_failed"],
        }).raise_for_status()
        yield base


@pytest.fixture(scope="module")
def client(localstripe):
    return stripe.StripeClient(API_KEY, base_addresses={"api": localstripe}, max_network_retries=0)


def new_booking(db, quantity=2) -> tuple[str, int]:
    with connect(db.app_url) as conn:
        inventory = conn.execute("SELECT api.create_inventory(%s, 10, 2500, 'usd')",
                                 (f"gig-{uuid.uuid4().hex[:8]}",)).fetchone()[0]
        hold = conn.execute("SELECT hold_id FROM api.place_hold(%s, %s, 'alice')", (inventory, quantity)).fetchone()[0]
        answer = conn.execute("SELECT api.create_booking(%s, 'alice', ARRAY[%s::uuid])",
                              (uuid.uuid4().hex, hold)).fetchone()[0]
    return answer["booking_id"], answer["amount"]


def pay(server, booking_id, key=None):
    return httpx.post(server + "/payment-intents", json={"booking_id": booking_id},
                      headers={"Idempotency-Key": key or uuid.uuid4().hex}, timeout=30)


def wait_for_status(db, booking_id, wanted, seconds=20):
    def status():
        return db.one("SELECT status FROM booking.bookings WHERE booking_id = %s", (booking_id,))

    wait_until(lambda: status() == wanted, seconds)
    return status()


def confirm_with_card(client, payment_intent_id, number):
    """What Stripe.js does in the browser: attach a card, then confirm."""
    method = client.v1.payment_methods.create(params={
        "type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
    client.v1.payment_intents.update(payment_intent_id, params={"payment_method": method.id})
    return client.v1.payment_intents.confirm(payment_intent_id)


def test_pay_with_a_test_card_and_the_webhook_confirms_the_booking(server, module_db, client):
    booking_id, amount = new_booking(module_db)
    key = uuid.uuid4().hex
    resp = pay(server, booking_id, key)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"payment_intent_id", "client_secret", "amount", "currency"}
    assert (body["amount"], body["currency"]) == (amount, "usd")
    assert pay(server, booking_id, key).json() == body  # the same answer on replay
    assert module_db.one("SELECT payment_intent_id FROM booking.bookings WHERE booking_id = %s", (booking_id,)) == \
        body["payment_intent_id"]

    confirm_with_card(client, body["payment_intent_id"], "4242424242424242")
    assert wait_for_status(module_db, booking_id, "confirmed") == "confirmed"
    assert module_db.rows("SELECT kind, stripe_object_id, amount FROM ledger.transactions WHERE booking_id = %s",
                       (booking_id,)) == [("charge", body["payment_intent_id"], amount)]
    assert module_db.one("SELECT count(*) FROM jobs.jobs WHERE kind = 'email.booking_confirmed' "
                      "AND payload ->> 'booking_id' = %s", (booking_id,)) == 1
    # localstripe's event, signed by localstripe, stored once.
    assert module_db.one("SELECT count(*) FROM stripe.events WHERE type = 'payment_intent.succeeded' "
                      "AND payload #>> '{data,object,id}' = %s", (body["payment_intent_id"],)) == 1


def test_a_declined_card_leaves_the_booking_payment_failed(server, module_db, client):
    booking_id, _ = new_booking(module_db)
    intent = pay(server, booking_id).json()
    with pytest.raises(stripe.CardError):
        confirm_with_card(client, intent["payment_intent_id"], "4000000000000341")
    assert wait_for_status(module_db, booking_id, "payment_failed") == "payment_failed"
    assert module_db.one("SELECT count(*) FROM ledger.transactions WHERE booking_id = %s", (booking_id,)) == 0


def test_ten_concurrent_requests_with_one_key_create_one_payment_intent(server, module_db, client):
    booking_id, _ = new_booking(module_db)
    before = len(client.v1.payment_intents.list(params={"limit": 100}).data)
    key = uuid.uuid4().hex
    barrier = threading.Barrier(10)
    responses = []

    def fire():
        with httpx.Client(timeout=30) as c:
            barrier.wait()
            responses.append(c.post(server + "/payment-intents", json={"booking_id": booking_id},
                                    headers={"Idempotency-Key": key}))

    threads = [threading.Thread(target=fire) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(responses) == 10
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 409} and 200 in statuses, [r.text for r in responses]
    answers = [r.json() for r in responses if r.status_code == 200]
    assert all(a == answers[0] for a in answers)  # the first answer and its replays
    for r in responses:
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "RI002"
    after = len(client.v1.payment_intents.list(params={"limit": 100}).data)
    assert after == before + 1


def test_bad_requests(server, module_db):
    booking_id, _ = new_booking(module_db)
    resp = httpx.post(server + "/payment-intents", json={"booking_id": booking_id})
    assert (resp.status_code, resp.json()["error"]["code"]) == (400, "idempotency_key_missing")
    key = uuid.uuid4().hex
    assert pay(server, booking_id, key).status_code == 200
    other, _ = new_booking(module_db)
    resp = pay(server, other, key)
    assert (resp.status_code, resp.json()["error"]["code"]) == (422, "RI001")
    resp = httpx.post(server + "/payment-intents", content=b"nope", headers={"Idempotency-Key": "k-bad"})
    assert resp.status_code == 400
    resp = httpx.post(server + "/payment-intents", json={"booking_id": "not-a-uuid"}, headers={"Idempotency-Key": "k2"})
    assert resp.status_code == 400
    unknown = str(uuid.uuid4())
    first = pay(server, unknown, "k-unknown")
    assert (first.status_code, first.json()["error"]["code"]) == (404, "RB005")
    assert pay(server, unknown, "k-unknown").json() == first.json()  # stored as the final answer
    assert module_db.one("SELECT count(*) FROM core.idempotency_keys WHERE key = 'k-bad'") == 0
    # The key's length is the database's rule (api.idempotency_begin): 22001 becomes 400.
    resp = pay(server, booking_id, "k" * 256)
    assert (resp.status_code, resp.json()["error"]["code"]) == (400, "22001")
    assert module_db.one("SELECT count(*) FROM core.idempotency_keys WHERE length(key) > 255") == 0
