"""The waitlist (contract: "On-sale fairness"): returned units go to the entries in join
order, each served whole; nobody else can take them; offers lapse and move on."""

from __future__ import annotations

import threading
import time
import uuid

from psycopg.types.json import Jsonb

from tests.pg import connect
from tests.sql.helpers import new_inventory, on_connections, place, sqlstate_of, wait_past
from tests.stripe_events import event, payment_intent


def join(conn, inventory, quantity, holder, key=None):
    return conn.execute("SELECT api.join_waitlist(%s, %s, %s, %s)", (inventory, quantity, holder, key)).fetchone()[0]


def status(conn, entry):
    return conn.execute("SELECT * FROM api.waitlist_status(%s)", (entry,)).fetchone()


def availability(conn, inventory):
    return conn.execute("SELECT * FROM api.availability(%s)", (inventory,)).fetchone()


def assert_invariants(db):
    assert db.rows("SELECT * FROM ops.oversold_inventory") == []
    assert db.rows("SELECT * FROM ops.broken_rows") == []


def overview(db, inventory):
    return db.rows(
        "SELECT waiting, offered, claimed, lapsed, left_list, units_owed FROM ops.waitlist_overview"
        " WHERE inventory_id = %s", (inventory,))[0]


def test_twenty_entries_and_ten_units_released_at_once_offer_the_first_ten(db, app):
    inventory = new_inventory(app, capacity=10)
    holds = [place(app, inventory, 1, holder=f"buyer{i}")[0] for i in range(10)]
    entries = [join(app, inventory, 1, f"fan{i:02}") for i in range(20)]
    assert [status(app, e)[:2] for e in entries] == [("waiting", i + 1) for i in range(20)]
    pending = list(holds)

    def release(conn):
        return conn.execute("SELECT api.release_hold(%s)", (pending.pop(),)).fetchone()[0]

    results, errors = on_connections(db.app_url, 10, release)
    assert errors == [] and results == [True] * 10
    states = [status(app, e) for e in entries]
    assert [s[0] for s in states[:10]] == ["offered"] * 10
    assert [s[:2] for s in states[10:]] == [("waiting", i + 1) for i in range(10)]
    # Each offer is a live hold of its entry's holder.
    for i, (_, _, hold_id, expires_at) in enumerate(states[:10]):
        assert db.one("SELECT holder FROM booking.holds WHERE hold_id = %s AND status = 'live'", (hold_id,)) == f"fan{i:02}"
        assert expires_at is not None
    assert availability(app, inventory) == (10, 0, 10, 0)
    assert db.one("SELECT count(*) FROM jobs.jobs WHERE kind = 'email.waitlist_offer'") == 10
    assert overview(db, inventory) == (10, 10, 0, 0, 0, 0)
    assert_invariants(db)


def test_owed_units_go_to_the_first_entry_whole_and_no_outsider_or_later_entry_takes_them(db, app):
    inventory = new_inventory(app, capacity=3)
    a, _ = place(app, inventory, 1, holder="a")
    b, _ = place(app, inventory, 1, holder="b")
    place(app, inventory, 1, holder="c")
    group = join(app, inventory, 2, "group")
    single = join(app, inventory, 1, "single")
    assert app.execute("SELECT api.release_hold(%s)", (a,)).fetchone()[0] is True
    # One unit is owed to the group, which wants two: it waits whole, and keeps the unit.
    assert status(app, group)[:2] == ("waiting", 1)
    assert status(app, single)[:2] == ("waiting", 2)
    assert availability(app, inventory) == (3, 0, 2, 0)
    assert sqlstate_of(app, "SELECT * FROM api.place_hold(%s, 1, 'outsider')", (inventory,)) == "RB001"
    assert overview(db, inventory)[5] == 1
    assert_invariants(db)
    # The second unit comes back: the group is offered both; the later entry still waits.
    app.execute("SELECT api.release_hold(%s)", (b,))
    state, _, hold_id, _ = status(app, group)
    assert state == "offered"
    assert db.one("SELECT quantity FROM booking.holds WHERE hold_id = %s", (hold_id,)) == 2
    assert status(app, single)[:2] == ("waiting", 1)
    assert availability(app, inventory) == (3, 0, 3, 0)
    assert_invariants(db)


def test_an_expired_hold_reaches_the_waitlist_with_no_sweeper_and_a_lapsed_offer_moves_on(db, app, shim):
    inventory = new_inventory(app, capacity=1, ttl="2 seconds")
    _, expires_at = place(app, inventory, 1, holder="early")
    first = join(app, inventory, 1, "first")
    second = join(app, inventory, 1, "second")
    wait_past(app, expires_at)
    # The dead hold's unit is owed to the entries: an outsider cannot reclaim it.
    assert availability(app, inventory) == (1, 0, 0, 0)
    assert sqlstate_of(app, "SELECT * FROM api.place_hold(%s, 1, 'outsider')", (inventory,)) == "RB001"
    state, _, hold_id, offer_expires_at = status(app, first)
    assert state == "offered"
    # The first entry books the offer but does not pay in time: the offer lapses.
    booking = app.execute("SELECT api.create_booking(%s, 'first', %s::uuid[])", (uuid.uuid4().hex, [hold_id])).fetchone()[0]
    assert status(app, first)[0] == "claimed"
    wait_past(app, offer_expires_at)
    assert status(app, second)[0] == "offered"
    assert status(app, first)[0] == "lapsed"
    # Its payment arrives late: the unit is the second entry's now, so it goes back.
    ingest = "SELECT api.ingest_stripe_event(%s)"
    pi = payment_intent("pi_" + uuid.uuid4().hex[:10], booking["booking_id"], booking["amount"])
    assert shim.execute(ingest, (Jsonb(event("payment_intent.succeeded", pi)),)).fetchone()[0] == "processed"
    assert db.one("SELECT status FROM booking.bookings WHERE booking_id = %s", (booking["booking_id"],)) == "refund_pending"
    assert db.one("SELECT count(*) FROM jobs.jobs WHERE kind = 'stripe.refund'") == 1
    assert overview(db, inventory) == (0, 1, 0, 1, 0, 0)
    assert_invariants(db)


def test_the_sweeper_makes_the_offer_of_an_expired_hold(db, app):
    inventory = new_inventory(app, capacity=2, ttl="1 second")
    _, expires_at = place(app, inventory, 2, holder="early")
    entry = join(app, inventory, 2, "fan")
    wait_past(app, expires_at)
    db.one("CALL booking.sweep_expired_holds()")
    assert db.one("SELECT status FROM booking.waitlist_entries WHERE entry_id = %s", (entry,)) == "offered"
    assert overview(db, inventory)[:2] == (0, 1)
    assert_invariants(db)


def test_cancelled_bookings_and_added_capacity_serve_the_waitlist(db, app):
    inventory = new_inventory(app, capacity=2)
    hold, _ = place(app, inventory, 2, holder="buyer")
    booking = app.execute("SELECT api.create_booking(%s, 'buyer', %s::uuid[])", (uuid.uuid4().hex, [hold])).fetchone()[0]
    first = join(app, inventory, 2, "first")
    second = join(app, inventory, 3, "second")
    assert app.execute("SELECT api.cancel_booking(%s, 'changed my mind')", (booking["booking_id"],)).fetchone()[0] == "cancelled"
    assert status(app, first)[0] == "offered"
    app.execute("SELECT api.set_capacity(%s, 4)", (inventory,))
    assert status(app, second)[:2] == ("waiting", 1)  # two of the three are owed
    assert availability(app, inventory) == (4, 0, 2, 0)
    app.execute("SELECT api.set_capacity(%s, 5)", (inventory,))
    assert status(app, second)[0] == "offered"
    assert availability(app, inventory) == (5, 0, 5, 0)
    assert_invariants(db)


def test_joining_with_units_there_and_nobody_waiting_is_an_offer_at_once(db, app):
    inventory = new_inventory(app, capacity=5)
    entry = join(app, inventory, 3, "fan")
    state, position, hold_id, _ = status(app, entry)
    assert (state, position) == ("offered", None)
    assert availability(app, inventory) == (5, 0, 3, 2)
    assert_invariants(db)


def test_leaving_releases_an_offer_to_the_next_entry(db, app):
    inventory = new_inventory(app, capacity=1)
    first = join(app, inventory, 1, "first")
    second = join(app, inventory, 1, "second")
    third = join(app, inventory, 1, "third")
    assert status(app, first)[0] == "offered"
    assert app.execute("SELECT api.leave_waitlist(%s)", (third,)).fetchone()[0] is True
    assert app.execute("SELECT api.leave_waitlist(%s)", (third,)).fetchone()[0] is False
    assert status(app, third)[:2] == ("left", None)
    offer = status(app, first)[2]
    assert app.execute("SELECT api.leave_waitlist(%s)", (first,)).fetchone()[0] is True
    assert db.one("SELECT status FROM booking.holds WHERE hold_id = %s", (offer,)) == "released"
    assert status(app, second)[0] == "offered"
    # Nobody waits any more: a released offer's unit is for anyone again.
    app.execute("SELECT api.leave_waitlist(%s)", (second,))
    assert availability(app, inventory) == (1, 0, 0, 1)
    place(app, inventory, 1, holder="outsider")
    assert availability(app, inventory) == (1, 0, 1, 0)
    assert_invariants(db)


def test_keys_errors_and_grants(db, app):
    inventory = new_inventory(app, capacity=0)
    other = new_inventory(app, capacity=0)
    entry = join(app, inventory, 2, "fan", key="k1")
    assert join(app, inventory, 2, "fan", key="k1") == entry
    assert sqlstate_of(app, "SELECT api.join_waitlist(%s, 3, 'fan', 'k1')", (inventory,)) == "RI001"
    assert sqlstate_of(app, "SELECT api.join_waitlist(%s, 2, 'fan', 'k1')", (other,)) == "RI001"
    assert sqlstate_of(app, "SELECT * FROM api.waitlist_status(%s)", (uuid.uuid4(),)) == "RB005"
    assert sqlstate_of(app, "SELECT api.leave_waitlist(%s)", (uuid.uuid4(),)) == "RB005"
    assert sqlstate_of(app, "SELECT api.join_waitlist(%s, 1, 'fan')", (uuid.uuid4(),)) == "RB005"
    assert sqlstate_of(app, "SELECT api.join_waitlist(%s, 0, 'fan')", (inventory,)) == "22023"
    assert sqlstate_of(app, "SELECT api.join_waitlist(%s, 1, '')", (inventory,)) == "22023"
    assert db.one("SELECT count(*) FROM booking.waitlist_entries") == 1


def test_a_mixed_on_sale_never_deadlocks_and_keeps_every_invariant(db, app):
    # Buyers, releases, joins, leaves, polls and sweeps at once on one small inventory whose
    # holds (and offers) die after a second: the only error allowed is RB001.
    import random
    import threading
    import time

    import psycopg

    from tests.pg import connect

    inventory = new_inventory(app, capacity=12, ttl="1 second")
    entries: list = []
    stop = time.monotonic() + 6

    def client(conn):
        rng = random.Random(id(conn))
        unexpected = []
        while time.monotonic() < stop:
            roll = rng.random()
            try:
                if roll < 0.3:
                    hold, _ = place(conn, inventory, rng.randint(1, 3), holder=f"b{rng.randint(1, 50)}")
                    if rng.random() < 0.5:
                        conn.execute("SELECT api.release_hold(%s)", (hold,))
                elif roll < 0.55:
                    entries.append(join(conn, inventory, rng.randint(1, 3), f"f{rng.randint(1, 1000)}"))
                elif roll < 0.65 and entries:
                    conn.execute("SELECT api.leave_waitlist(%s)", (rng.choice(entries),))
                elif roll < 0.9 and entries:
                    status(conn, rng.choice(entries))
                else:
                    conn.execute("SELECT booking.sweep_batch(100)")
            except psycopg.Error as exc:
                if exc.sqlstate != "RB001":
                    unexpected.append(exc.sqlstate)
        return unexpected

    from tests.sql.helpers import on_connections as run
    results, errors = run(db.url, 12, client)
    assert errors == []
    assert [s for r in results for s in r] == []
    assert len(entries) > 20
    assert_invariants(db)
    # Strictly in order: no entry that still waits joined before an entry that was offered
    # (it was waiting, ahead, when that offer was made).
    assert db.rows(
        """
        SELECT o.entry_id FROM booking.waitlist_entries AS o
        JOIN booking.waitlist_entries AS w ON w.inventory_id = o.inventory_id
        WHERE o.hold_id IS NOT NULL AND w.status = 'waiting' AND w.join_no < o.join_no
        """) == []
    assert db.one("SELECT count(*) FROM booking.waitlist_entries WHERE hold_id IS NOT NULL") > 0


def test_the_on_call_role_reads_the_overview(db, app):
    inventory = new_inventory(app, capacity=0)
    join(app, inventory, 1, "fan")
    from tests.pg import connect
    with connect(db.ops_url) as ops:
        assert ops.execute("SELECT waiting, units_owed FROM ops.waitlist_overview WHERE inventory_id = %s",
                           (inventory,)).fetchone() == (1, 0)
        assert ops.execute("SELECT count(*) FROM ops.oversold_inventory").fetchone()[0] == 0


def test_ten_expired_holds_polled_from_ten_connections_offer_the_first_ten_entries(db, app):
    inventory = new_inventory(app, capacity=10, ttl="2 seconds")
    deadlines = [place(app, inventory, 1, holder=f"buyer{i}")[1] for i in range(10)]
    entries = [join(app, inventory, 1, f"fan{i:02}") for i in range(20)]
    wait_past(app, max(deadlines))
    polled = list(reversed(entries))  # the later entries poll first

    def poll(conn):
        return status(conn, polled.pop(0))[0]

    results, errors = on_connections(db.app_url, 10, poll)
    assert errors == []
    # The offers (two seconds long) may be dead by now: read who got them from the table.
    offered = {e for (e,) in db.rows("SELECT entry_id FROM booking.waitlist_entries WHERE status = 'offered'")}
    assert offered == set(entries[:10])
    assert_invariants(db)


def test_the_first_join_and_a_return_at_the_same_moment_leave_no_unit_to_an_outsider(db, app):
    # The first join of an inventory creates its waitlist row; a return committing at the
    # same moment saw no row and put its unit in a bucket. The join must then find that
    # unit (and take it), or an outsider could buy it while the entry waits.
    inventory = new_inventory(app, 1)
    hold, _ = place(app, inventory, 1, holder="bob")
    with connect(db.app_url) as releaser, connect(db.app_url) as joiner:
        releaser.execute("BEGIN")
        assert releaser.execute("SELECT api.release_hold(%s)", (hold,)).fetchone()[0] is True
        entry = {}
        t = threading.Thread(target=lambda: entry.update(id=join(joiner, inventory, 1, "carol")))
        t.start()
        time.sleep(1)  # the join runs (or waits for the release) while the release is open
        releaser.execute("COMMIT")
        t.join(timeout=30)
    assert status(app, entry["id"])[0] == "offered"
    assert sqlstate_of(app, "SELECT * FROM api.place_hold(%s, 1, 'outsider')", (inventory,)) == "RB001"
    assert_invariants(db)
