"""POST /webhooks/stripe through a real uvicorn process against a real database."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.pg import connect, wait_until
from tests.shim.server import shim
from tests.stripe_events import encode, event, sign

SECRET = "whsec_test_primary_0123456789abcdef"
OLD_SECRET = "whsec_test_previous_0123456789abcdef"


@pytest.fixture(scope="module")
def server(module_db, tmp_path_factory):
    log = tmp_path_factory.mktemp("shim") / "shim.log"
    # Two secrets configured, as while rotating: the new one first.
    with shim(module_db.shim_url, f"{SECRET},{OLD_SECRET}", log=log) as base:
        yield base


def plant_apply_failure(db, when: str, message: str) -> None:
    """A simulated bug: applying an event raises XX000 `message` when the SQL condition
    `when` (on NEW, the stripe.events row) holds. remove_apply_failure takes it away."""
    with connect(db.url) as conn:
        conn.execute(f"""
            CREATE FUNCTION stripe.test_explode() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF {when} THEN
                    RAISE EXCEPTION '{message}' USING ERRCODE = 'XX000';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_explode BEFORE INSERT OR UPDATE ON stripe.events
                FOR EACH ROW EXECUTE FUNCTION stripe.test_explode();
        """)


def remove_apply_failure(db) -> None:
    with connect(db.url) as conn:
        conn.execute("DROP TRIGGER test_explode ON stripe.events; DROP FUNCTION stripe.test_explode()")


def post(base: str, body: bytes, signature: str | None, **headers) -> httpx.Response:
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return httpx.post(base + "/webhooks/stripe", content=body, headers=headers, timeout=30)


def stored(db, event_id: str) -> int:
    return db.one("SELECT count(*) FROM stripe.events WHERE event_id = %s", (event_id,))


def assert_error(resp: httpx.Response, status: int, code: str):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_a_valid_event_is_stored_once_even_when_posted_twice(server, module_db):
    evt = event()
    body = encode(evt)
    first = post(server, body, sign(body, SECRET), **{"X-Request-ID": "req-abc-1"})
    assert (first.status_code, first.json()) == (200, {"outcome": "ignored"})
    assert first.headers["X-Request-ID"] == "req-abc-1"
    second = post(server, body, sign(body, SECRET))
    assert (second.status_code, second.json()) == (200, {"outcome": "duplicate"})
    assert stored(module_db, evt["id"]) == 1
    assert module_db.one("SELECT correlation_id FROM stripe.events WHERE event_id = %s", (evt["id"],)) == "req-abc-1"


def test_a_request_id_is_made_when_none_or_a_bad_one_is_given(server):
    made = httpx.get(server + "/healthz").headers["X-Request-ID"]
    assert len(made) == 32
    replaced = httpx.get(server + "/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers["X-Request-ID"]
    assert replaced != "bad id with spaces" and len(replaced) == 32


def test_rotation_either_configured_secret_and_any_matching_v1(server, module_db):
    evt = event()
    body = encode(evt)
    assert post(server, body, sign(body, OLD_SECRET)).status_code == 200
    # Stripe sends one v1 per active secret while an endpoint's secret is rolled.
    evt2 = event()
    body2 = encode(evt2)
    t = int(time.time())
    good = sign(body2, SECRET, t).split("v1=")[1]
    bad = sign(body2, "whsec_someone_else", t).split("v1=")[1]
    resp = post(server, body2, f"t={t},v1={bad},v1={good}")
    assert resp.status_code == 200, resp.text
    assert stored(module_db, evt["id"]) == 1 and stored(module_db, evt2["id"]) == 1


def bad_cases():
    """(name, body, signature header, status, code) of requests that must change nothing."""
    evt = event()
    body = encode(evt)
    now = int(time.time())
    reserialised = json.dumps(evt, indent=2).encode()
    tampered = body.replace(b'"livemode":false', b'"livemode":true')
    assert tampered != body
    return evt["id"], [
        ("tampered body", tampered, sign(body, SECRET), 400, "signature_invalid"),
        ("re-serialised body", reserialised, sign(body, SECRET), 400, "signature_invalid"),
        ("wrong secret", body, sign(body, "whsec_wrong"), 400, "signature_invalid"),
        ("stale timestamp", body, sign(body, SECRET, now - 330), 400, "signature_timestamp"),
        ("future timestamp", body, sign(body, SECRET, now + 330), 400, "signature_timestamp"),
        ("missing header", body, None, 400, "signature_missing"),
        ("header without v1", body, f"t={now}", 400, "signature_invalid"),
        ("garbage header", body, "nonsense", 400, "signature_invalid"),
    ]


def test_every_bad_signature_is_400_with_a_reason_and_writes_nothing(server, module_db):
    event_id, cases = bad_cases()
    before = module_db.one("SELECT count(*) FROM stripe.events")
    for name, body, header, status, code in cases:
        resp = post(server, body, header)
        assert resp.status_code == status, (name, resp.text)
        assert_error(resp, status, code)
    assert stored(module_db, event_id) == 0
    assert module_db.one("SELECT count(*) FROM stripe.events") == before


def test_signed_bodies_that_are_not_stripe_events_are_400_rw001(server, module_db):
    before = module_db.one("SELECT count(*) FROM stripe.events")
    for body in (b"this is not json", b'{"id": "evt_x", "object": "charge"}', b"[1,2,3]", b""):
        resp = post(server, body, sign(body, SECRET))
        assert_error(resp, 400, "RW001")
    assert module_db.one("SELECT count(*) FROM stripe.events") == before


def test_a_body_over_one_mib_is_413_and_writes_nothing(server, module_db):
    evt = event(obj={"id": "obj_big", "object": "test", "blob": "x" * (1024 * 1024)})
    body = encode(evt)
    resp = post(server, body, sign(body, SECRET))
    assert_error(resp, 413, "body_too_large")
    assert stored(module_db, evt["id"]) == 0

    # Without a Content-Length (chunked), the limit still holds.
    def chunks():
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    resp = httpx.post(server + "/webhooks/stripe", content=chunks(), headers={"Stripe-Signature": sign(body, SECRET)})
    assert_error(resp, 413, "body_too_large")
    assert stored(module_db, evt["id"]) == 0


def test_twenty_simultaneous_deliveries_give_twenty_200s_and_one_row(server, module_db):
    evt = event("payment_intent.succeeded")
    body = encode(evt)
    header = sign(body, SECRET)
    barrier = threading.Barrier(20)
    statuses, outcomes = [], []

    def deliver():
        with httpx.Client(timeout=30) as client:
            barrier.wait()
            resp = client.post(server + "/webhooks/stripe", content=body, headers={"Stripe-Signature": header})
        statuses.append(resp.status_code)
        outcomes.append(resp.json().get("outcome"))

    threads = [threading.Thread(target=deliver) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 20
    assert sorted(outcomes) == ["duplicate"] * 19 + ["ignored"]
    assert stored(module_db, evt["id"]) == 1


def test_a_failure_to_apply_is_500_and_recorded_for_retry(server, module_db):
    """A bug in applying (here: a trigger that raises) rolls the event back; the shim
    records the failure in a fresh transaction, and a redelivery applies it once fixed."""
    evt = event("test.explodes")
    body = encode(evt)
    plant_apply_failure(module_db, "NEW.type = 'test.explodes' AND NEW.status = 'ignored'",
                        "simulated bug while applying")
    try:
        resp = post(server, body, sign(body, SECRET), **{"X-Request-ID": "req-explode"})
        assert_error(resp, 500, "XX000")
        row = module_db.rows(
            "SELECT status, attempts, last_sqlstate, last_error, payload, next_attempt_at IS NOT NULL, correlation_id "
            "FROM stripe.events WHERE event_id = %s",
            (evt["id"],),
        )
        assert len(row) == 1
        status, attempts, sqlstate, last_error, payload, has_retry, correlation_id = row[0]
        assert (status, attempts, sqlstate, payload, has_retry) == ("failed", 1, "XX000", evt, True)
        assert "simulated bug while applying" in last_error
        assert correlation_id == "req-explode"
        # And an error row survives the rolled-back transaction, with the request's id.
        assert module_db.rows("SELECT source, sqlstate, correlation_id FROM ops.errors "
                               "WHERE message LIKE '%%simulated bug%%'") == [("webhook", "XX000", "req-explode")]
    finally:
        remove_apply_failure(module_db)
    resp = post(server, body, sign(body, SECRET))
    assert (resp.status_code, resp.json()) == (200, {"outcome": "ignored"})
    assert module_db.rows("SELECT status, attempts FROM stripe.events WHERE event_id = %s", (evt["id"],)) == [
        ("ignored", 2)
    ]


def test_readyz_reports_health(server):
    resp = httpx.get(server + "/readyz")
    assert resp.status_code == 200
    assert resp.json()["status"] in ("ok", "degraded")
    assert resp.json()["checks"]["database"]["status"] == "ok"


def test_readyz_is_degraded_when_the_shim_and_the_database_disagree_on_livemode(module_db):
    with shim(module_db.shim_url, SECRET, extra_env={"STRIPE_LIVEMODE": "true"}) as base:
        health = httpx.get(base + "/readyz").json()
    assert health["status"] == "degraded"
    assert "stripe.config" in health["checks"]["stripe_mode"]["message"]


def burst(base: str, bodies: list[bytes]) -> list[httpx.Response]:
    """Posts every body at the same moment, each on its own connection; answers in order."""
    barrier = threading.Barrier(len(bodies))
    answers: list[httpx.Response | None] = [None] * len(bodies)

    def deliver(i: int):
        with httpx.Client(timeout=30) as client:
            barrier.wait()
            answers[i] = client.post(base + "/webhooks/stripe", content=bodies[i],
                                     headers={"Stripe-Signature": sign(bodies[i], SECRET), "X-Request-ID": f"burst-{i}"})

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_a_burst_is_applied_in_batches_and_a_bad_event_answers_for_itself_only(module_db, tmp_path):
    # One batch in flight at a time: deliveries that arrive meanwhile wait and go together.
    log = tmp_path / "shim.log"
    with shim(module_db.shim_url, SECRET, extra_env={"WEBHOOK_BATCH_CONCURRENCY": "1"}, log=log) as base:
        events = [event() for _ in range(40)]
        # The first batch waits in the database (a lock taken here) until the others have
        # arrived, however slowly a busy machine sends them; they then go together.
        answers = []
        with connect(module_db.url) as blocker:
            blocker.execute("BEGIN")
            blocker.execute("LOCK TABLE stripe.events IN SHARE MODE")
            sender = threading.Thread(target=lambda: answers.extend(burst(base, [encode(e) for e in events])))
            sender.start()
            assert wait_until(lambda: module_db.one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pyshim' AND wait_event_type = 'Lock'"
            ) >= 1, seconds=30)
            time.sleep(2)
            blocker.execute("COMMIT")
            sender.join(timeout=60)
        assert [(a.status_code, a.json()) for a in answers] == [(200, {"outcome": "ignored"})] * 40
        ids = [e["id"] for e in events]
        rows = module_db.rows("SELECT xmin::text, correlation_id FROM stripe.events WHERE event_id = ANY(%s)", (ids,))
        assert len(rows) == 40
        transactions = len({xmin for xmin, _ in rows})
        assert transactions < 20, f"40 simultaneous deliveries took {transactions} transactions"
        assert sorted(c for _, c in rows) == sorted(f"burst-{i}" for i in range(40))

        # A batch that fails is applied one event at a time: the bad ones answer for
        # themselves, the good ones are applied once.
        good = [event() for _ in range(20)]
        bad = [b'{"id": "evt_truncated", "object": "event"', encode({"id": "evt_not_an_event", "object": "charge"})]
        answers = burst(base, [encode(e) for e in good] + bad)
        assert [(a.status_code, a.json()) for a in answers[:20]] == [(200, {"outcome": "ignored"})] * 20
        for answer in answers[20:]:
            assert_error(answer, 400, "RW001")
        assert module_db.one("SELECT count(*) FROM stripe.events WHERE event_id = ANY(%s)",
                              ([e["id"] for e in good] + ["evt_truncated", "evt_not_an_event"],)) == 20
    # The first delivery went alone; the bad ones were in a batch with others, which failed.
    assert "running its items one at a time" in log.read_text()
