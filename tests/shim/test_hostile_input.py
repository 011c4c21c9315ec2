"""Hostile input over HTTP (issue 12): every answer is a 4xx with the contract's JSON error
body, never a 500 or a 503, and nothing is written. Against a real shim and database."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import psycopg
import psycopg_pool
import pytest

from pyshim.errors import is_unavailable
from tests.pg import connect
from tests.shim.server import shim
from tests.shim.test_webhook import assert_error, burst
from tests.sql.helpers import new_inventory, place
from tests.stripe_events import encode, event, payment_intent, sign

SECRET = "whsec_test_primary_0123456789abcdef"  # the secret burst() signs with
JWT_SECRET = "j" * 40
PEPPER = "pepper-" + "x" * 40


@pytest.fixture(scope="module")
def server(module_db, tmp_path_factory):
    log = tmp_path_factory.mktemp("shim") / "shim.log"
    env = {
        "JWT_SECRET": JWT_SECRET, "REFRESH_TOKEN_PEPPER": PEPPER,
        # Configured but never reached: every request below is refused before any Stripe call.
        "STRIPE_API_KEY": "sk_test_unused", "STRIPE_API_BASE": "http://127.0.0.1:9",
        "WEBHOOK_BATCH_CONCURRENCY": "1",
    }
    with shim(module_db.shim_url, SECRET, extra_env=env, log=log) as base:
        yield base, log


def counts(db) -> tuple:
    """Every table a request could write."""
    return db.rows(
        "SELECT (SELECT count(*) FROM stripe.events), (SELECT count(*) FROM core.refresh_tokens),"
        " (SELECT count(*) FROM core.idempotency_keys), (SELECT count(*) FROM core.errors),"
        " (SELECT count(*) FROM ledger.transactions), (SELECT count(*) FROM jobs.jobs)")[0]


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("timestamp", ["9" * 5000, "\u00b9\u00b2\u00b3", "17\u00b2", "-1", ""])
def test_a_timestamp_that_is_not_a_unix_time_is_400_before_any_signature_check(server, module_db, timestamp):
    # Header bytes are Latin-1 to the server: b"\xb9" is the superscript one it sees.
    base, _ = server
    before = counts(module_db)
    body = encode(event())
    good = sign(body, SECRET)
    resp = httpx.post(base + "/webhooks/stripe", content=body, timeout=30,
                      headers={"Stripe-Signature": f"t={timestamp},{good.split(',', 1)[1]}".encode("latin-1")})
    assert_error(resp, 400, "signature_invalid")
    assert counts(module_db) == before


def test_a_second_huge_timestamp_after_a_good_one_is_refused_not_500(server, module_db):
    # The Stripe library reads header items its own way; whatever it makes of them, the
    # answer is a 400, never its ValueError as a 500.
    base, _ = server
    before = counts(module_db)
    body = encode(event())
    t = int(time.time())
    header = f"t={t},t={'9' * 5000},v1={'0' * 64}"
    resp = httpx.post(base + "/webhooks/stripe", content=body, headers={"Stripe-Signature": header}, timeout=30)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"].startswith("signature_")
    assert counts(module_db) == before


def deep_event_body(depth: int) -> bytes:
    evt = event()
    text = encode(evt).decode()
    # {"...","data":{"object":{...,"deep":[[[...]]]}}}: built as text, never parsed in Python.
    head, _, _ = text.rpartition("}}}")
    return (head + ',"deep":' + deep_json(depth) + "}}}").encode(), evt["id"]


def test_a_signed_event_nested_100000_deep_is_400_rw001_and_not_stored(server, module_db):
    base, _ = server
    body, event_id = deep_event_body(100_000)
    before = counts(module_db)
    resp = httpx.post(base + "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body, SECRET)},
                      timeout=60)
    assert_error(resp, 400, "RW001")
    assert counts(module_db) == before
    assert module_db.one("SELECT count(*) FROM stripe.events WHERE event_id = %s", (event_id,)) == 0


def test_good_events_batched_with_a_deep_one_are_applied_and_the_deep_one_is_400(server, module_db):
    # One batch in flight at a time (WEBHOOK_BATCH_CONCURRENCY=1): the deliveries that
    # arrive meanwhile go together, so the deep one shares a batch with good ones; the
    # batch fails with 54001 and falls back to one at a time (not 503 for everyone).
    base, log = server
    for _ in range(3):
        good = [event() for _ in range(12)]
        deep, deep_id = deep_event_body(100_000)
        before = module_db.one("SELECT count(*) FROM stripe.events")
        answers = burst(base, [encode(e) for e in good[:6]] + [deep] + [encode(e) for e in good[6:]])
        statuses = [a.status_code for a in answers]
        assert statuses == [200] * 6 + [400] + [200] * 6, [a.text for a in answers]
        assert_error(answers[6], 400, "RW001")
        assert module_db.one("SELECT count(*) FROM stripe.events WHERE event_id = ANY(%s)",
                              ([e["id"] for e in good],)) == 12
        assert module_db.one("SELECT count(*) FROM stripe.events WHERE event_id = %s", (deep_id,)) == 0
        assert module_db.one("SELECT count(*) FROM stripe.events") == before + 12
    assert "running its items one at a time" in log.read_text()


@pytest.mark.parametrize("path", ["/payment-intents", "/auth/refresh"])
def test_json_nested_5000_deep_without_credentials_is_400(server, module_db, path):
    base, _ = server
    before = counts(module_db)
    body = ('{"booking_id": ' if path == "/payment-intents" else '{"refresh_token": ') + deep_json(5000) + "}"
    assert len(body) > 10_000
    resp = httpx.post(base + path, content=body.encode(), timeout=30,
                      headers={"Content-Type": "application/json", "Idempotency-Key": "deep-1"})
    assert_error(resp, 400, "22023")
    assert counts(module_db) == before


@pytest.mark.parametrize("token", ["\\ud800", "a\\udfffb", "\\udc00\\ud800"])
def test_a_refresh_token_with_a_lone_surrogate_is_400(server, module_db, token):
    base, _ = server
    before = counts(module_db)
    resp = httpx.post(base + "/auth/refresh", content=('{"refresh_token": "' + token + '"}').encode(),
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert_error(resp, 400, "22023")
    assert counts(module_db) == before


def test_a_booking_id_with_a_lone_surrogate_is_400(server, module_db):
    base, _ = server
    before = counts(module_db)
    resp = httpx.post(base + "/payment-intents", content=b'{"booking_id": "\\ud800"}', timeout=30,
                      headers={"Content-Type": "application/json", "Idempotency-Key": "surrogate-1"})
    assert resp.status_code == 400, resp.text
    assert set(resp.json()["error"]) == {"code", "message"}
    assert counts(module_db) == before


def test_the_shim_is_still_healthy_after_all_that(server):
    base, _ = server
    assert httpx.get(base + "/healthz", timeout=10).json() == {"status": "ok"}
    resp = httpx.post(base + "/auth/refresh", json={"refresh_token": "unknown-token"}, timeout=30)
    assert_error(resp, 401, "RA001")
    assert json.loads(resp.text)["error"]["message"]


@pytest.mark.parametrize("sqlstate, unavailable", [
    ("08006", True), ("08001", True), ("57P01", True), ("57P02", True), ("57P03", True), ("53300", True),
    ("54001", False), ("54000", False), ("22023", False), ("40001", False), ("53100", False),
])
def test_unavailable_is_decided_by_sqlstate_not_by_exception_class(sqlstate, unavailable):
    error = psycopg.errors.lookup(sqlstate)("x")
    assert error.sqlstate == sqlstate
    assert is_unavailable(error) is unavailable
    # 54001 is an OperationalError subclass in psycopg: the class alone would say unreachable.
    assert is_unavailable(psycopg.OperationalError("the connection is closed")) is True
    assert is_unavailable(psycopg_pool.PoolTimeout("no connection in 5 s")) is True
    assert is_unavailable(ValueError("x")) is False


def new_booking(db):
    with connect(db.app_url) as app:
        inventory = new_inventory(app, 10, amount=600)
        hold, _ = place(app, inventory, 2)
        answer = app.execute("SELECT api.create_booking(%s, 'alice', %s::uuid[])",
                             (uuid.uuid4().hex, [hold])).fetchone()[0]
    return answer["booking_id"], answer["amount"]


def deliver(base, evt) -> httpx.Response:
    body = encode(evt)
    return httpx.post(base + "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body, SECRET)},
                      timeout=30)


@pytest.mark.parametrize("change", [{"amount_received": -5}, {"amount_received": 0}, {"currency": "zzz"},
                                    {"currency": ""}, {"currency": None}],
                         ids=["amount -5", "amount 0", "currency zzz", "currency empty", "currency null"])
def test_a_payment_with_bad_values_is_400_rw001_stored_nothing_and_not_retried(server, module_db, change):
    base, _ = server
    booking_id, amount = new_booking(module_db)
    before = counts(module_db)
    evt = event("payment_intent.succeeded", payment_intent("pi_" + evt_suffix(), booking_id, amount) | change)
    assert_error(deliver(base, evt), 400, "RW001")
    assert counts(module_db) == before  # no 'failed' event for the retry job, no error row
    assert module_db.one("SELECT status FROM booking.bookings WHERE booking_id = %s", (booking_id,)) \
        == "pending_payment"


def test_a_payment_in_another_currency_is_200_ignored_and_on_calls_critical_error(server, module_db):
    base, _ = server
    booking_id, amount = new_booking(module_db)
    before = counts(module_db)
    evt = event("payment_intent.succeeded", payment_intent("pi_" + evt_suffix(), booking_id, amount, currency="eur"))
    resp = deliver(base, evt)
    assert (resp.status_code, resp.json()) == (200, {"outcome": "ignored"})
    after = counts(module_db)
    # events +1 (ignored), errors +1 (critical), jobs +1 (its alert); no ledger row.
    assert [a - b for a, b in zip(after, before)] == [1, 0, 0, 1, 0, 1]
    assert module_db.one("SELECT status FROM booking.bookings WHERE booking_id = %s", (booking_id,)) \
        == "pending_payment"


def evt_suffix() -> str:
    return uuid.uuid4().hex[:12]


def raw_post(base: str, path: str, content_length: bytes, body: bytes = b"{}") -> bytes:
    """A request with a Content-Length header httpx would not send; the status line back."""
    import socket

    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: " + content_length + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("content_length", [b"9" * 5000, b"\xb9", b"1\xb2"], ids=["5000 digits", "¹", "1²"])
def test_a_content_length_that_int_refuses_is_never_a_500(server, module_db, content_length):
    base, _ = server
    before = counts(module_db)
    answer = raw_post(base, "/webhooks/stripe", content_length)
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:300]
    assert counts(module_db) == before


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\u0000"])
def test_a_signed_event_with_a_string_postgresql_refuses_is_400_rw001_and_not_stored(server, module_db, escape):
    base, _ = server
    evt = event()
    text = encode(evt).decode()
    head, _, _ = text.rpartition("}}}")
    body = (head + ',"note":"' + escape + '"}}}').encode()
    before = counts(module_db)
    resp = httpx.post(base + "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body, SECRET)},
                      timeout=30)
    assert_error(resp, 400, "RW001")
    assert counts(module_db) == before
