"""Bookings: idempotent creation, the state machine as data, history, side effects."""

from __future__ import annotations

import itertools
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.pg import connect
from tests.sql.helpers import at_once, new_inventory, on_connections, place, sqlstate_of, wait_past


def create(conn, key, holder, hold_ids, metadata=None):
    return conn.execute(
        "SELECT api.create_booking(%s, %s, %s::uuid[], %s)", (key, holder, hold_ids, Jsonb(metadata or {}))
    ).fetchone()[0]


def counts(db):
    return db.rows(
        "SELECT (SELECT count(*) FROM booking.bookings), (SELECT count(*) FROM booking.booking_history), "
        "(SELECT count(*) FROM booking.holds WHERE status = 'booked'), (SELECT count(*) FROM jobs.jobs)"
    )[0]


def test_a_booking_takes_live_holds_and_prices_them(db, app):
    inventory = new_inventory(app, 10, amount=2500)
    other = new_inventory(app, 10, amount=1000)
    h1, e1 = place(app, inventory, 2)
    h2, e2 = place(app, other, 3)
    answer = create(app, "k-1", "alice", [h1, h2], {"order": "A-1"})
    assert set(answer) == {"booking_id", "status", "amount", "currency", "expires_at"}
    assert (answer["status"], answer["amount"], answer["currency"]) == ("pending_payment", 2 * 2500 + 3 * 1000, "usd")
    booking = app.execute("SELECT api.get_booking(%s)", (answer["booking_id"],)).fetchone()[0]
    assert booking["status"] == "pending_payment" and booking["metadata"] == {"order": "A-1"}
    assert sorted(h["status"] for h in booking["holds"]) == ["booked", "booked"]
    assert [h["event"] for h in booking["history"]] == ["created"]
    assert (booking["amount_paid"], booking["amount_refunded"], booking["payment_intent_id"]) == (0, 0, None)
    # One deadline for the booking and its holds: the earliest.
    assert db.one("SELECT count(DISTINCT expires_at) FROM booking.holds WHERE booking_id = %s",
                  (answer["booking_id"],)) == 1
    assert app.execute("SELECT api.release_hold(%s)", (h1,)).fetchone()[0] is False


def test_same_key_same_request_replays_the_same_answer_in_any_hold_order(db, app):
    inventory = new_inventory(app, 10)
    h1, _ = place(app, inventory, 1)
    h2, _ = place(app, inventory, 1)
    first = create(app, "k-2", "alice", [h1, h2])
    assert create(app, "k-2", "alice", [h2, h1]) == first
    assert counts(db)[0] == 1


def test_same_key_with_another_request_is_ri001_and_writes_nothing(db, app):
    inventory = new_inventory(app, 10)
    h1, _ = place(app, inventory, 1)
    h2, _ = place(app, inventory, 1)
    create(app, "k-3", "alice", [h1])
    before = counts(db)
    assert sqlstate_of(app, "SELECT api.create_booking('k-3', 'alice', %s::uuid[])", ([h2],)) == "RI001"
    assert sqlstate_of(app, "SELECT api.create_booking('k-3', 'alice', %s::uuid[], '{\"x\": 1}')", ([h1],)) == "RI001"
    assert counts(db) == before
    assert db.one("SELECT status FROM booking.holds WHERE hold_id = %s", (h2,)) == "live"


def test_twenty_concurrent_creates_with_one_key_make_one_booking(db):
    with connect(db.app_url) as conn:
        inventory = new_inventory(conn, 10)
        holds = [place(conn, inventory, 1)[0] for _ in range(3)]
    answers, errors = on_connections(db.app_url, 20, lambda c: create(c, "double-click", "alice", holds))
    assert errors == []
    assert len(answers) == 20 and all(a == answers[0] for a in answers)
    assert db.one("SELECT count(*) FROM booking.bookings") == 1
    assert db.one("SELECT count(*) FROM booking.booking_history") == 1


BAD_CREATES = [
    ("key empty", ("", "alice", "HOLDS", {}), "22023"),
    ("key too long", ("k" * 256, "alice", "HOLDS", {}), "22001"),
    ("holder NULL", ("k", None, "HOLDS", {}), "22004"),
    ("holder too long", ("k", "h" * 201, "HOLDS", {}), "22001"),
    ("holds NULL", ("k", "alice", None, {}), "22004"),
    ("holds empty", ("k", "alice", [], {}), "22023"),
    ("hold NULL", ("k", "alice", [None], {}), "22004"),
    ("hold twice", ("k", "alice", "TWICE", {}), "22023"),
    ("metadata not an object", ("k", "alice", "HOLDS", [1]), "22023"),
    ("metadata too big", ("k", "alice", "HOLDS", {"x": "y" * 9000}), "22001"),
    ("unknown hold", ("k", "alice", "UNKNOWN", {}), "RB005"),
    ("someone else's hold", ("k", "bob", "HOLDS", {}), "RB002"),
]


@pytest.mark.parametrize("args, code", [c[1:] for c in BAD_CREATES], ids=[c[0] for c in BAD_CREATES])
def test_bad_create_requests_are_refused_and_write_nothing(db, app, args, code):
    inventory = new_inventory(app, 10)
    hold, _ = place(app, inventory, 1)
    key, holder, holds, metadata = args
    holds = {"HOLDS": [hold], "TWICE": [hold, hold], "UNKNOWN": [hold, uuid.uuid4()]}.get(holds, holds) \
        if isinstance(holds, str) else holds
    before = counts(db)
    assert sqlstate_of(app, "SELECT api.create_booking(%s, %s, %s::uuid[], %s)",
                       (key, holder, holds, Jsonb(metadata))) == code
    assert counts(db) == before


def test_released_expired_or_booked_holds_are_rb002(db, app):
    inventory = new_inventory(app, 10)
    released, _ = place(app, inventory, 1)
    app.execute("SELECT api.release_hold(%s)", (released,))
    booked, _ = place(app, inventory, 1)
    create(app, "k-b", "alice", [booked])
    for hold in (released, booked):
        assert sqlstate_of(app, "SELECT api.create_booking('k-x', 'alice', %s::uuid[])", ([hold],)) == "RB002"
    short = new_inventory(app, 10, ttl="1 second")
    dead, expires_at = place(app, short, 1)
    wait_past(app, expires_at)
    assert sqlstate_of(app, "SELECT api.create_booking('k-y', 'alice', %s::uuid[])", ([dead],)) == "RB002"


def test_holds_in_two_currencies_are_refused(db, app):
    usd = new_inventory(app, 10, currency="usd")
    eur = new_inventory(app, 10, currency="eur")
    holds = [place(app, usd, 1)[0], place(app, eur, 1)[0]]
    assert sqlstate_of(app, "SELECT api.create_booking('k-c', 'alice', %s::uuid[])", (holds,)) == "22023"


# -- the state machine ----------------------------------------------------------------------

STATES = ["pending_payment", "payment_failed", "confirmed", "expired", "cancelled", "refund_pending",
          "partially_refunded", "refunded", "disputed"]


def transitions(db):
    return {(f, e): t for f, e, t in db.rows("SELECT from_status, event, to_status FROM ops.booking_transitions")}


def booking_in(db, app, status):
    """A booking forced into `status` by a superuser with triggers off (replica role)."""
    inventory = new_inventory(app, 10)
    hold, _ = place(app, inventory, 1)
    booking_id = create(app, None, "alice", [hold])["booking_id"]
    with connect(db.url) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE booking.bookings SET status = %s WHERE booking_id = %s", (status, booking_id))
    return booking_id


def test_every_event_from_every_state_follows_the_table_or_is_rb004(db, app):
    table = transitions(db)
    events = sorted({e for _, e in table})
    assert set(STATES) == {s for s, in db.rows("SELECT status FROM booking.booking_states")}
    for status, event in itertools.product(STATES, events):
        booking_id = booking_in(db, app, status)
        with connect(db.url) as conn:
            if (status, event) in table:
                assert conn.execute("SELECT booking.apply_event(%s, %s)", (booking_id, event)).fetchone()[0] == \
                    table[(status, event)]
                last = conn.execute("SELECT event, from_status, to_status FROM booking.booking_history "
                                    "WHERE booking_id = %s ORDER BY history_id DESC LIMIT 1", (booking_id,)).fetchone()
                assert last == (event, status, table[(status, event)])
            else:
                assert sqlstate_of(conn, "SELECT booking.apply_event(%s, %s)", (booking_id, event)) == "RB004"
                assert db.one("SELECT status FROM booking.bookings WHERE booking_id = %s", (booking_id,)) == status


def test_a_direct_update_of_status_is_rb004_even_for_the_owner(db, app):
    for source, target in itertools.product(STATES, STATES):
        if source == target:
            continue
        booking_id = booking_in(db, app, source)
        with connect(db.url) as conn:
            conn.execute("SET ROLE booking_owner")
            assert sqlstate_of(conn, "UPDATE booking.bookings SET status = %s WHERE booking_id = %s",
                               (target, booking_id)) == "RB004"
            # Even with a version bump, only a listed (from, event, to) passes.
            bad_event = "not_an_event"
            assert sqlstate_of(
                conn, "UPDATE booking.bookings SET status = %s, version = version + 1, last_event = %s "
                      "WHERE booking_id = %s", (target, bad_event, booking_id)) == "RB004"
    booking_id = booking_in(db, app, "pending_payment")
    with connect(db.url) as conn:
        conn.execute("SET ROLE booking_owner")
        assert sqlstate_of(conn, "UPDATE booking.bookings SET amount = 1 WHERE booking_id = %s", (booking_id,)) == "RB004"


def test_concurrent_events_on_one_booking_take_turns_and_none_is_lost(db, app):
    inventory = new_inventory(app, 10)
    hold, _ = place(app, inventory, 1)
    booking_id = create(app, "k-c", "alice", [hold])["booking_id"]
    conns = [connect(db.url) for _ in range(10)]
    events = ["payment_failed"] * 5 + ["payment_succeeded"] * 5

    def fire(conn):
        event = events[conns.index(conn)]
        try:
            return event, conn.execute("SELECT booking.apply_event(%s, %s)", (booking_id, event)).fetchone()[0]
        except psycopg.Error as exc:
            if exc.sqlstate != "RB004":
                raise
            return event, exc.sqlstate

    try:
        results, errors = at_once(conns, fire)
    finally:
        for c in conns:
            c.close()
    assert errors == []
    history = db.rows("SELECT event, from_status, to_status FROM booking.booking_history WHERE booking_id = %s "
                      "ORDER BY history_id", (booking_id,))
    applied = [r for r in results if r[1] != "RB004"]
    # Every applied event has its history row, in a chain with no gaps.
    assert len(history) == 1 + len(applied)
    for previous, current in zip(history, history[1:]):
        assert previous[2] == current[1]
    # Once confirmed, payment_failed is refused: one success, and failures only before it.
    assert sum(1 for e, r in results if e == "payment_succeeded" and r == "confirmed") == 1
    assert len(results) == 10
    assert db.one("SELECT status FROM booking.bookings WHERE booking_id = %s", (booking_id,)) == "confirmed"


def test_confirmation_converts_holds_sells_units_and_enqueues_one_email(db, app):
    inventory = new_inventory(app, 10)
    hold, _ = place(app, inventory, 3)
    booking_id = create(app, "k-e", "alice", [hold])["booking_id"]
    with connect(db.url) as conn:
        with conn.transaction():
            conn.execute("SELECT set_config('app.correlation_id', 'req-77', true)")
            conn.execute("SELECT booking.apply_event(%s, 'payment_succeeded', 'evt_ok')", (booking_id,))
    assert app.execute("SELECT * FROM api.availability(%s)", (inventory,)).fetchone() == (10, 3, 0, 7)
    jobs = db.rows("SELECT kind, payload, correlation_id FROM jobs.jobs")
    sku = db.one("SELECT sku FROM booking.inventory WHERE inventory_id = %s", (inventory,))
    # The job carries the message as of the confirmation (the worker's role reads no booking).
    message = {"booking_id": str(booking_id), "holder": "alice", "amount": 3 * 2500, "currency": "usd",
               "items": [{"sku": sku, "quantity": 3}]}
    assert jobs == [("email.booking_confirmed", message, "req-77")]
    history = app.execute("SELECT api.get_booking(%s)", (booking_id,)).fetchone()[0]["history"]
    assert history[-1]["stripe_event_id"] == "evt_ok" and history[-1]["correlation_id"] == "req-77"
    assert db.rows("SELECT count(*) FROM ops.oversold_inventory") == [(0,)]


def test_cancel_before_and_after_payment(db, app):
    inventory = new_inventory(app, 10)
    h1, _ = place(app, inventory, 2)
    unpaid = create(app, "k-u", "alice", [h1])["booking_id"]
    assert app.execute("SELECT api.cancel_booking(%s, 'changed my mind')", (unpaid,)).fetchone()[0] == "cancelled"
    assert app.execute("SELECT * FROM api.availability(%s)", (inventory,)).fetchone() == (10, 0, 0, 10)
    assert sqlstate_of(app, "SELECT api.cancel_booking(%s, 'again')", (unpaid,)) == "RB004"
    assert db.one("SELECT detail FROM booking.booking_history WHERE booking_id = %s AND event = 'cancel'",
                  (unpaid,)) == "changed my mind"

    h2, _ = place(app, inventory, 4)
    answer = create(app, "k-p", "alice", [h2])
    paid = answer["booking_id"]
    db.one("SELECT ledger.post_charge(%s, 'pi_cancel_me', %s, 'usd')", (paid, answer["amount"]))
    db.one("SELECT booking.apply_event(%s, 'payment_succeeded')", (paid,))
    assert app.execute("SELECT api.cancel_booking(%s, 'refund please')", (paid,)).fetchone()[0] == "refund_pending"
    assert app.execute("SELECT * FROM api.availability(%s)", (inventory,)).fetchone() == (10, 0, 0, 10)
    assert db.rows("SELECT payload ->> 'booking_id', payload ->> 'payment_intent_id' FROM jobs.jobs "
                   "WHERE kind = 'stripe.refund'") == [(str(paid), "pi_cancel_me")]
    for sql, args, code in (
        ("SELECT api.cancel_booking(%s, 'x')", (uuid.uuid4(),), "RB005"),
        ("SELECT api.cancel_booking(NULL, 'x')", None, "22004"),
        ("SELECT api.cancel_booking(%s, NULL)", (paid,), "22004"),
        ("SELECT api.cancel_booking(%s, %s)", (paid, "r" * 501), "22001"),
        ("SELECT api.get_booking(%s)", (uuid.uuid4(),), "RB005"),
        ("SELECT api.get_booking(NULL)", None, "22004"),
    ):
        assert sqlstate_of(app, sql, args) == code
    assert db.rows("SELECT count(*) FROM ops.oversold_inventory") == [(0,)]


def test_the_sweeper_expires_unpaid_bookings_past_their_deadline(db, app):
    inventory = new_inventory(app, 10, ttl="1 second")
    hold, expires_at = place(app, inventory, 2)
    booking_id = create(app, "k-x", "alice", [hold])["booking_id"]
    wait_past(app, expires_at)
    result = db.one("CALL booking.sweep_expired_holds()")
    assert (result["expired_bookings"], result["expired_holds"]) == (1, 1)
    assert db.one("SELECT status FROM booking.bookings WHERE booking_id = %s", (booking_id,)) == "expired"
    assert app.execute("SELECT * FROM api.availability(%s)", (inventory,)).fetchone() == (10, 0, 0, 10)
