"""The waiting room (contract: "On-sale fairness"): admission times computed from the
position and the rate, exact against the database clock, with no job running."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

from tests.sql.helpers import new_inventory, on_connections, sqlstate_of, wait_past


def open_queue(conn, inventory, opens_in="2 seconds", rate=60, ttl="10 minutes"):
    return conn.execute(
        "SELECT clock_timestamp() + %s::interval AS opens_at, api.open_queue(%s, clock_timestamp() + %s::interval, %s, %s::interval)",
        (opens_in, inventory, opens_in, rate, ttl),
    ).fetchone()[0]


def opens_at_of(db, inventory):
    return db.one("SELECT opens_at FROM booking.queues WHERE inventory_id = %s", (inventory,))


def enter(conn, inventory, visitor):
    return conn.execute("SELECT api.enter_queue(%s, %s)", (inventory, visitor)).fetchone()[0]


def queue_status(conn, ticket):
    return conn.execute("SELECT * FROM api.queue_status(%s)", (ticket,)).fetchone()


def hold_v2(conn, inventory, holder, ticket, quantity=1):
    return conn.execute("SELECT * FROM api.place_hold_v2(%s, %s, %s, NULL, %s)", (inventory, quantity, holder, ticket)).fetchone()


def test_admission_times_are_exact_and_holds_need_an_admitted_ticket(db, app):
    inventory = new_inventory(app, capacity=100)
    rate, ttl = 15, timedelta(seconds=5)  # one admission every 4 s, each for 5 s
    open_queue(app, inventory, opens_in="2 seconds", rate=rate, ttl="5 seconds")
    opens_at = opens_at_of(db, inventory)
    early = {f"early{i}": enter(app, inventory, f"early{i}") for i in range(3)}
    assert all(queue_status(app, t) == (None, False, None, None) for t in early.values())
    # A queued inventory refuses holds without an admitted ticket, before opens_at too.
    assert sqlstate_of(app, "SELECT * FROM api.place_hold(%s, 1, 'early0')", (inventory,)) == "RB006"
    assert sqlstate_of(app, "SELECT * FROM api.place_hold_v2(%s, 1, 'early0', NULL, %s)", (inventory, early["early0"])) == "RB006"
    wait_past(app, opens_at)
    late = {f"late{i}": enter(app, inventory, f"late{i}") for i in range(3)}
    statuses = {v: queue_status(app, t) for v, t in {**early, **late}.items()}
    assert sorted(statuses[v][0] for v in early) == [1, 2, 3]
    assert [statuses[v][0] for v in late] == [4, 5, 6]  # arrival order after opening
    step = timedelta(minutes=1) / rate
    for position, admitted, admitted_at, expires_at in statuses.values():
        assert abs(admitted_at - (opens_at + (position - 1) * step)) < timedelta(milliseconds=1)
        assert expires_at - admitted_at == ttl
    by_position = {s[0]: (v, {**early, **late}[v], s) for v, s in statuses.items()}
    first_visitor, first_ticket, _ = by_position[1]
    assert queue_status(app, first_ticket)[1] is True
    hold_v2(app, inventory, first_visitor, first_ticket)
    # Someone else's ticket, or place_hold without one, is RB006 after opens_at too.
    assert sqlstate_of(app, "SELECT * FROM api.place_hold_v2(%s, 1, 'thief', NULL, %s)", (inventory, first_ticket)) == "RB006"
    assert sqlstate_of(app, "SELECT * FROM api.place_hold(%s, 1, %s)", (inventory, first_visitor)) == "RB006"
    # Position 2: refused until its admission time, by the database's clock, then admitted.
    second_visitor, second_ticket, (_, _, second_at, second_expires) = by_position[2]
    assert app.execute("SELECT clock_timestamp() < %s", (second_at,)).fetchone()[0]
    assert queue_status(app, second_ticket)[1] is False
    assert sqlstate_of(app, "SELECT * FROM api.place_hold_v2(%s, 1, %s, NULL, %s)",
                       (inventory, second_visitor, second_ticket)) == "RB006"
    wait_past(app, second_at)
    assert queue_status(app, second_ticket)[1] is True
    hold_v2(app, inventory, second_visitor, second_ticket)
    # Its admission ends after the ttl.
    wait_past(app, second_expires)
    assert queue_status(app, second_ticket)[1] is False
    assert sqlstate_of(app, "SELECT * FROM api.place_hold_v2(%s, 1, %s, NULL, %s)",
                       (inventory, second_visitor, second_ticket)) == "RB006"
    assert db.rows("SELECT * FROM ops.oversold_inventory") == []


# One observation: the database clock read just before api.queue_status reads its own (the
# LATERAL makes the function wait for it) and just after, with what the function decided.
OBSERVE = ("SELECT before.at, s.admitted, clock_timestamp() FROM (SELECT clock_timestamp() AS at) AS before,"
           " LATERAL api.queue_status(%s) AS s")


def observe_around(conn, ticket, instant, margin=timedelta(milliseconds=30)):
    """api.queue_status called as fast as one connection can from `margin` before the
    instant to `margin` after it: [(clock before, admitted, clock after)]."""
    wait_past(conn, instant - margin)
    seen = []
    while not seen or seen[-1][0] <= instant + margin:
        seen.append(conn.execute(OBSERVE, (ticket,)).fetchone())
    return seen


def test_the_admission_instant_to_the_millisecond(db, app):
    inventory = new_inventory(app, capacity=10)
    open_queue(app, inventory, opens_in="1 second", rate=70)
    tickets = [enter(app, inventory, f"v{i}") for i in range(3)]
    wait_past(app, opens_at_of(db, inventory))
    late = [enter(app, inventory, f"late{i}") for i in range(3)]
    assert len(set(tickets + late)) == 6
    bracketed = 0
    for k, ticket in enumerate(late):
        position, _, admitted_at, _ = queue_status(app, ticket)
        assert position == 4 + k
        # 3/70 minute = 2.571428 s after opening for the first, then every 857.142 ms.
        assert admitted_at == db.one(
            "SELECT opens_at + %s * interval '1 minute' / 70 FROM booking.queues WHERE inventory_id = %s",
            (position - 1, inventory))
        seen = observe_around(app, ticket, admitted_at)
        # Every answer agrees with the clock: not admitted while the clock had not reached
        # the instant, admitted once it had.
        for before, admitted, after in seen:
            if after < admitted_at:
                assert admitted is False, (before, admitted_at)
            if before >= admitted_at:
                assert admitted is True, (before, admitted_at)
        # And the change is seen within a millisecond on each side of the instant (for at
        # least one ticket: a loaded machine may leave a gap in the calls around one).
        last_refused = max(after for _, admitted, after in seen if not admitted)
        first_admitted = min(before for before, admitted, _ in seen if admitted)
        if admitted_at - last_refused <= timedelta(milliseconds=1) and \
                first_admitted - admitted_at <= timedelta(milliseconds=1):
            bracketed += 1
    assert bracketed >= 1, "no ticket's admission was seen within 1 ms of its instant"


def test_the_same_visitor_gets_the_same_ticket_even_at_once(db, app):
    inventory = new_inventory(app, capacity=10)
    other = new_inventory(app, capacity=10)
    open_queue(app, inventory, opens_in="1 hour")
    open_queue(app, other, opens_in="1 hour")
    ticket = enter(app, inventory, "alice")
    assert enter(app, inventory, "alice") == ticket
    results, errors = on_connections(db.app_url, 8, lambda conn: enter(conn, inventory, "bob"))
    assert errors == [] and len(set(results)) == 1
    # A ticket is for one inventory's queue.
    assert enter(app, other, "alice") != ticket
    assert db.one("SELECT count(*) FROM booking.queue_tickets") == 3


def test_the_order_before_opening_is_a_seeded_permutation(db, app):
    inventory = new_inventory(app, capacity=10)
    open_queue(app, inventory, opens_in="3 seconds", rate=1000000)

    def enter_many(conn):
        tag = uuid.uuid4().hex[:6]
        return [enter(conn, inventory, f"{tag}-{i}") for i in range(10)]

    results, errors = on_connections(db.app_url, 8, enter_many)
    assert errors == []
    tickets = [t for batch in results for t in batch]
    wait_past(app, opens_at_of(db, inventory))
    positions = {t: queue_status(app, t)[0] for t in tickets}
    assert sorted(positions.values()) == list(range(1, 81))
    arrival = [row[0] for row in db.rows(
        "SELECT ticket_id FROM booking.queue_tickets WHERE inventory_id = %s ORDER BY arrival_no", (inventory,))]
    assert [positions[t] for t in arrival] != list(range(1, 81))
    # The order is sha256(secret seed || ticket id), which no caller can read.
    seed = bytes(db.one("SELECT seed FROM booking.queues WHERE inventory_id = %s", (inventory,)))
    expected = sorted(tickets, key=lambda t: hashlib.sha256(seed + t.bytes).digest())
    assert [positions[t] for t in expected] == list(range(1, 81))
    assert sqlstate_of(app, "SELECT seed FROM booking.queues") == "42501"


def test_settings_change_before_opening_only_and_errors(db, app):
    inventory = new_inventory(app, capacity=10)
    open_queue(app, inventory, opens_in="1 hour", rate=10)
    open_queue(app, inventory, opens_in="1 second", rate=20)
    assert db.one("SELECT admit_per_minute FROM booking.queues WHERE inventory_id = %s", (inventory,)) == 20
    wait_past(app, opens_at_of(db, inventory))
    assert sqlstate_of(app, "SELECT api.open_queue(%s, now(), 30)", (inventory,)) == "RB002"
    assert sqlstate_of(app, "SELECT * FROM api.queue_status(%s)", (uuid.uuid4(),)) == "RB005"
    assert sqlstate_of(app, "SELECT api.open_queue(%s, now(), 30)", (uuid.uuid4(),)) == "RB005"
    plain = new_inventory(app, capacity=10)
    assert sqlstate_of(app, "SELECT api.enter_queue(%s, 'x')", (plain,)) == "RB005"
    assert sqlstate_of(app, "SELECT api.open_queue(%s, now() + interval '1 hour', 0)", (plain,)) == "22023"
    assert sqlstate_of(app, "SELECT api.open_queue(%s, now() + interval '1 hour', 1000001)", (plain,)) == "22023"
    # An inventory without a queue: place_hold_v2 is place_hold.
    assert app.execute("SELECT count(*) FROM api.place_hold_v2(%s, 1, 'x')", (plain,)).fetchone()[0] == 1


def test_the_waitlist_is_no_way_around_the_waiting_room(db, app):
    inventory = new_inventory(app, capacity=5)
    open_queue(app, inventory, opens_in="1 hour")
    entry = app.execute("SELECT api.join_waitlist(%s, 1, 'sneaky')", (inventory,)).fetchone()[0]
    assert app.execute("SELECT status FROM api.waitlist_status(%s)", (entry,)).fetchone()[0] == "waiting"
    assert app.execute("SELECT available FROM api.availability(%s)", (inventory,)).fetchone()[0] == 5
    # A transaction setting is no ticket either: place_hold checks whatever it names.
    with app.transaction():
        app.execute("SELECT set_config('booking.queue_ticket', %s, true)", (str(uuid.uuid4()),))
        assert sqlstate_of(app, "SELECT * FROM api.place_hold(%s, 1, 'sneaky')", (inventory,)) == "RB006"
