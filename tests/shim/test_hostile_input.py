"""Hostile input over HTTP (issue 12): every answer is a 4xx with the contract's JSON error
body, never a 500 or a 503, and nothing is written. Against a real shim and database."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.pg import database_from_template
from tests.shim.server import shim
from tests.shim.test_webhook import assert_error, burst
from tests.stripe_events import encode, event, sign

SECRET = "whsec_test_primary_0123456789abcdef"  # the secret burst() signs with
JWT_SECRET = "j" * 40
PEPPER = "pepper-" + "x" * 40


@pytest.fixture(scope="module")
def hostile_db(migrated):
    with database_from_template(migrated) as database:
        yield database


@pytest.fixture(scope="module")
def server(hostile_db, tmp_path_factory):
    log = tmp_path_factory.mktemp("shim") / "shim.log"
    env = {
        "JWT_SECRET": JWT_SECRET, "REFRESH_TOKEN_PEPPER": PEPPER,
        # Configured but never reached: every request below is refused before any Stripe call.
        "STRIPE_API_KEY": "sk_test_unused", "STRIPE_API_BASE": "http://127.0.0.1:9",
        "WEBHOOK_BATCH_CONCURRENCY": "1",
    }
    with shim(hostile_db.shim_url, SECRET, extra_env=env, log=log) as base:
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
def test_a_timestamp_that_is_not_a_unix_time_is_400_before_any_signature_check(server, hostile_db, timestamp):
    # Header bytes are Latin-1 to the server: b"\xb9" is the superscript one it sees.
    base, _ = server
    before = counts(hostile_db)
    body = encode(event())
    good = sign(body, SECRET)
    resp = httpx.post(base + "/webhooks/stripe", content=body, timeout=30,
                      headers={"Stripe-Signature": f"t={timestamp},{good.split(',', 1)[1]}".encode("latin-1")})
    assert_error(resp, 400, "signature_invalid")
    assert counts(hostile_db) == before


def test_a_second_huge_timestamp_after_a_good_one_is_refused_not_500(server, hostile_db):
    # The Stripe library reads header items its own way; whatever it makes of them, the
    # answer is a 400, never its ValueError as a 500.
    base, _ = server
    before = counts(hostile_db)
    body = encode(event())
    t = int(time.time())
    header = f"t={t},t={'9' * 5000},v1={'0' * 64}"
    resp = httpx.post(base + "/webhooks/stripe", content=body, headers={"Stripe-Signature": header}, timeout=30)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"].startswith("signature_")
    assert counts(hostile_db) == before


def deep_event_body(depth: int) -> bytes:
    evt = event()
    text = encode(evt).decode()
    # {"...","data":{"object":{...,"deep":[[[...]]]}}}: built as text, never parsed in Python.
    head, _, _ = text.rpartition("}}}")
    return (head + ',"deep":' + deep_json(depth) + "}}}").encode(), evt["id"]


def test_a_signed_event_nested_100000_deep_is_400_rw001_and_not_stored(server, hostile_db):
    base, _ = server
    body, event_id = deep_event_body(100_000)
    before = counts(hostile_db)
    resp = httpx.post(base + "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body, SECRET)},
                      timeout=60)
    assert_error(resp, 400, "RW001")
    assert counts(hostile_db) == before
    assert hostile_db.one("SELECT count(*) FROM stripe.events WHERE event_id = %s", (event_id,)) == 0


def test_good_events_batched_with_a_deep_one_are_applied_and_the_deep_one_is_400(server, hostile_db):
    # One batch in flight at a time (WEBHOOK_BATCH_CONCURRENCY=1): the deliveries that
    # arrive meanwhile go together, so the deep one shares a batch with good ones; the
    # batch fails with 54001 and falls back to one at a time (not 503 for everyone).
    base, log = server
    for _ in range(3):
        good = [event() for _ in range(12)]
        deep, deep_id = deep_event_body(100_000)
        before = hostile_db.one("SELECT count(*) FROM stripe.events")
        answers = burst(base, [encode(e) for e in good[:6]] + [deep] + [encode(e) for e in good[6:]])
        statuses = [a.status_code for a in answers]
        assert statuses == [200] * 6 + [400] + [200] * 6, [a.text for a in answers]
        assert_error(answers[6], 400, "RW001")
        assert hostile_db.one("SELECT count(*) FROM stripe.events WHERE event_id = ANY(%s)",
                              ([e["id"] for e in good],)) == 12
        assert hostile_db.one("SELECT count(*) FROM stripe.events WHERE event_id = %s", (deep_id,)) == 0
        assert hostile_db.one("SELECT count(*) FROM stripe.events") == before + 12
    assert "running its items one at a time" in log.read_text()


@pytest.mark.parametrize("path", ["/payment-intents", "/auth/refresh"])
def test_json_nested_5000_deep_without_credentials_is_400(server, hostile_db, path):
    base, _ = server
    before = counts(hostile_db)
    body = ('{"booking_id": ' if path == "/payment-intents" else '{"refresh_token": ') + deep_json(5000) + "}"
    assert len(body) > 10_000
    resp = httpx.post(base + path, content=body.encode(), timeout=30,
                      headers={"Content-Type": "application/json", "Idempotency-Key": "deep-1"})
    assert_error(resp, 400, "22023")
    assert counts(hostile_db) == before


@pytest.mark.parametrize("token", ["\\ud800", "a\\udfffb", "\\udc00\\ud800"])
def test_a_refresh_token_with_a_lone_surrogate_is_400(server, hostile_db, token):
    base, _ = server
    before = counts(hostile_db)
    resp = httpx.post(base + "/auth/refresh", content=('{"refresh_token": "' + token + '"}').encode(),
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert_error(resp, 400, "22023")
    assert counts(hostile_db) == before


def test_a_booking_id_with_a_lone_surrogate_is_400(server, hostile_db):
    base, _ = server
    before = counts(hostile_db)
    resp = httpx.post(base + "/payment-intents", content=b'{"booking_id": "\\ud800"}', timeout=30,
                      headers={"Content-Type": "application/json", "Idempotency-Key": "surrogate-1"})
    assert resp.status_code == 400, resp.text
    assert set(resp.json()["error"]) == {"code", "message"}
    assert counts(hostile_db) == before


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
    import psycopg
    import psycopg_pool

    from pyshim.errors import is_unavailable

    error = psycopg.errors.lookup(sqlstate)("x")
    assert error.sqlstate == sqlstate
    assert is_unavailable(error) is unavailable
    # 54001 is an OperationalError subclass in psycopg: the class alone would say unreachable.
    assert is_unavailable(psycopg.OperationalError("the connection is closed")) is True
    assert is_unavailable(psycopg_pool.PoolTimeout("no connection in 5 s")) is True
    assert is_unavailable(ValueError("x")) is False
