"""Inventory and holds: arguments, SQLSTATEs, idempotent keys, exact deadlines, sweeping."""

from __future__ import annotations

import uuid

import pytest

from tests.pg import connect
from tests.sql.helpers import new_inventory, place, sqlstate_of, wait_past


def availability(conn, inventory_id):
    return conn.execute("SELECT * FROM api.availability(%s)", (inventory_id,)).fetchone()


def status(conn, hold_id):
    return conn.execute("SELECT * FROM api.hold_status(%s)", (hold_id,)).fetchone()


def table_counts(db):
    return db.rows(
        "SELECT (SELECT count(*) FROM booking.inventory), (SELECT count(*) FROM booking.holds), "
        "(SELECT coalesce(sum(free), 0) FROM booking.inventory_buckets)"
    )[0]


# -- create_inventory ---------------------------------------------------------------------

BAD_INVENTORY = [
    ("sku NULL", (None, 10, 100, "usd"), "22004"),
    ("sku empty", ("", 10, 100, "usd"), "22023"),
    ("sku too long", ("s" * 201, 10, 100, "usd"), "22001"),
    ("capacity NULL", ("x", None, 100, "usd"), "22004"),
    ("capacity negative", ("x", -1, 100, "usd"), "22023"),
    ("amount NULL", ("x", 10, None, "usd"), "22004"),
    ("amount negative", ("x", 10, -5, "usd"), "22023"),
    ("currency NULL", ("x", 10, 100, None), "22004"),
    ("currency unknown", ("x", 10, 100, "xyz"), "22023"),
    ("currency uppercase", ("x", 10, 100, "USD"), "22023"),
    ("currency too long", ("x", 10, 100, "usdd"), "22001"),
]


@pytest.mark.parametrize("args, code", [c[1:] for c in BAD_INVENTORY], ids=[c[0] for c in BAD_INVENTORY])
def test_create_inventory_rejects_bad_arguments_and_writes_nothing(db, app, args, code):
    assert sqlstate_of(app, "SELECT api.create_inventory(%s, %s, %s, %s)", args) == code
    assert table_counts(db) == (0, 0, 0)


@pytest.mark.parametrize(
    "ttl, extension, max_extensions, code",
    [("0 seconds", "1 minute", 1, "22023"), ("2 days", "1 minute", 1, "22023"), (None, "1 minute", 1, "22004"),
     ("1 minute", "-1 minute", 1, "22023"), ("1 minute", "1 minute", -1, "22023"), ("1 minute", "1 minute", 11, "22023")],
)
def test_create_inventory_rejects_bad_hold_settings(db, app, ttl, extension, max_extensions, code):
    sql = "SELECT api.create_inventory('x', 10, 100, 'usd', %s::interval, %s::interval, %s)"
    assert sqlstate_of(app, sql, (ttl, extension, max_extensions)) == code
    assert table_counts(db) == (0, 0, 0)


def test_create_inventory_is_idempotent_on_sku(db, app):
    first = new_inventory(app, 10, sku="gig")
    assert new_inventory(app, 10, sku="gig") == first
    assert sqlstate_of(app, "SELECT api.create_inventory('gig', 10, 9999, 'usd')") == "RI001"
    assert availability(app, first) == (10, 0, 0, 10)
    assert table_counts(db) == (1, 0, 10)


# -- place_hold: arguments and SQLSTATEs ----------------------------------------------------

BAD_HOLDS = [
    ("quantity 0", (0, "alice", None), "22023"),
    ("quantity negative", (-2, "alice", None), "22023"),
    ("quantity NULL", (None, "alice", None), "22004"),
    ("quantity over 100", (101, "alice", None), "22023"),
    ("holder NULL", (1, None, None), "22004"),
    ("holder empty", (1, "", None), "22023"),
    ("holder too long", (1, "h" * 201, None), "22001"),
    ("key empty", (1, "alice", ""), "22023"),
    ("key too long", (1, "alice", "k" * 256), "22001"),
]


@pytest.mark.parametrize("args, code", [c[1:] for c in BAD_HOLDS], ids=[c[0] for c in BAD_HOLDS])
def test_place_hold_rejects_bad_arguments_and_writes_nothing(db, app, args, code):
    inventory = new_inventory(app, 10)
    assert sqlstate_of(app, "SELECT * FROM api.place_hold(%s, %s, %s, %s)", (inventory, *args)) == code
    assert table_counts(db) == (1, 0, 10)


def test_unknown_or_null_inventory(db, app):
    assert sqlstate_of(app, "SELECT * FROM api.place_hold(%s, 1, 'alice')", (uuid.uuid4(),)) == "RB005"
    assert sqlstate_of(app, "SELECT * FROM api.place_hold(NULL, 1, 'alice')") == "22004"
    assert sqlstate_of(app, "SELECT * FROM api.availability(%s)", (uuid.uuid4(),)) == "RB005"
    assert sqlstate_of(app, "SELECT * FROM api.availability(NULL)") == "22004"
    assert table_counts(db) == (0, 0, 0)


def test_not_enough_available_is_rb001_and_changes_nothing(db, app):
    inventory = new_inventory(app, 5)
    place(app, inventory, 3)
    before = table_counts(db)
    assert sqlstate_of(app, "SELECT * FROM api.place_hold(%s, 3, 'bob')", (inventory,)) == "RB001"
    assert table_counts(db) == before
    assert availability(app, inventory) == (5, 0, 3, 2)
    place(app, inventory, 2, "bob")  # exactly what is left, spread over several buckets
    assert availability(app, inventory) == (5, 0, 5, 0)
    assert sqlstate_of(app, "SELECT * FROM api.place_hold(%s, 1, 'carol')", (inventory,)) == "RB001"


def test_a_hold_larger_than_any_bucket_takes_from_several(db, app):
    inventory = new_inventory(app, 100)  # 12 buckets of 8 or 9
    hold_id, _ = place(app, inventory, 60)
    assert availability(app, inventory) == (100, 0, 60, 40)
    assert app.execute("SELECT api.release_hold(%s)", (hold_id,)).fetchone()[0] is True
    assert availability(app, inventory) == (100, 0, 0, 100)
    assert db.rows("SELECT count(*) FROM ops.oversold_inventory") == [(0,)]


# -- idempotent hold keys ----------------------------------------------------------------

def test_a_repeated_holder_and_key_returns_the_same_open_hold(db, app):
    inventory = new_inventory(app, 10)
    first = place(app, inventory, 2, "alice", "cart-1")
    assert place(app, inventory, 2, "alice", "cart-1") == first
    assert place(app, inventory, 2, "bob", "cart-1") != first  # keys belong to a holder
    assert availability(app, inventory) == (10, 0, 4, 6)
    assert sqlstate_of(app, "SELECT * FROM api.place_hold(%s, 3, 'alice', 'cart-1')", (inventory,)) == "RI001"
    other = new_inventory(app, 10)
    assert sqlstate_of(app, "SELECT * FROM api.place_hold(%s, 2, 'alice', 'cart-1')", (other,)) == "RI001"
    # Once released, the key may hold again.
    assert app.execute("SELECT api.release_hold(%s)", (first[0],)).fetchone()[0] is True
    again = place(app, inventory, 2, "alice", "cart-1")
    assert again[0] != first[0]
    assert db.one("SELECT count(*) FROM booking.holds WHERE hold_key = 'cart-1'") == 3


# -- extend, release, status -------------------------------------------------------------

def test_extend_until_no_extensions_left(db, app):
    inventory = new_inventory(app, 10, extension="10 minutes", max_extensions=2)
    hold_id, expires_at = place(app, inventory, 1)
    assert status(app, hold_id)[4] == 2
    first = app.execute("SELECT api.extend_hold(%s)", (hold_id,)).fetchone()[0]
    assert (first - expires_at).total_seconds() == 600
    second = app.execute("SELECT api.extend_hold(%s)", (hold_id,)).fetchone()[0]
    assert (second - first).total_seconds() == 600
    assert status(app, hold_id)[4] == 0
    assert sqlstate_of(app, "SELECT api.extend_hold(%s)", (hold_id,)) == "RB003"
    assert status(app, hold_id)[2] == second


def test_extend_and_release_of_ended_or_unknown_holds(db, app):
    inventory = new_inventory(app, 10)
    hold_id, _ = place(app, inventory, 2)
    assert app.execute("SELECT api.release_hold(%s)", (hold_id,)).fetchone()[0] is True
    assert app.execute("SELECT api.release_hold(%s)", (hold_id,)).fetchone()[0] is False
    assert status(app, hold_id)[0] == "released"
    assert sqlstate_of(app, "SELECT api.extend_hold(%s)", (hold_id,)) == "RB002"
    assert app.execute("SELECT api.release_hold(%s)", (uuid.uuid4(),)).fetchone()[0] is False
    assert sqlstate_of(app, "SELECT api.extend_hold(%s)", (uuid.uuid4(),)) == "RB005"
    assert sqlstate_of(app, "SELECT * FROM api.hold_status(%s)", (uuid.uuid4(),)) == "RB005"
    for fn in ("api.extend_hold", "api.release_hold", "api.hold_status"):
        assert sqlstate_of(app, f"SELECT * FROM {fn}(NULL)") == "22004"
    assert availability(app, inventory) == (10, 0, 0, 10)


def test_a_hold_is_dead_the_moment_its_deadline_passes_with_no_sweeper(db, app):
    inventory = new_inventory(app, 4, ttl="2 seconds")
    hold_id, expires_at = place(app, inventory, 4)
    st = status(app, hold_id)
    assert st[0] == "live" and 1 <= st[3] <= 2 and st[4] == 1
    assert availability(app, inventory) == (4, 0, 4, 0)

    wait_past(app, expires_at)  # by the database's clock, just past the deadline
    assert status(app, hold_id) == ("expired", 4, expires_at, 0, 0)
    assert availability(app, inventory) == (4, 0, 0, 4)
    assert sqlstate_of(app, "SELECT api.extend_hold(%s)", (hold_id,)) == "RB002"
    overview = db.rows("SELECT live_held, expired_unswept, available FROM ops.holds_overview")
    assert overview == [(0, 4, 4)]
    # No sweeper ran: the row still says live; a new buyer reclaims it.
    assert db.one("SELECT status FROM booking.holds WHERE hold_id = %s", (hold_id,)) == "live"
    place(app, inventory, 4, "bob")
    assert db.one("SELECT status FROM booking.holds WHERE hold_id = %s", (hold_id,)) == "expired"
    assert availability(app, inventory) == (4, 0, 4, 0)
    assert app.execute("SELECT api.release_hold(%s)", (hold_id,)).fetchone()[0] is False
    assert db.rows("SELECT count(*) FROM ops.oversold_inventory") == [(0,)]


# -- capacity ------------------------------------------------------------------------------

def test_set_capacity(db, app):
    inventory = new_inventory(app, 10)
    place(app, inventory, 6)
    assert sqlstate_of(app, "SELECT api.set_capacity(%s, 5)", (inventory,)) == "RB001"
    assert availability(app, inventory) == (10, 0, 6, 4)
    app.execute("SELECT api.set_capacity(%s, 6)", (inventory,))
    assert availability(app, inventory) == (6, 0, 6, 0)
    app.execute("SELECT api.set_capacity(%s, 1000)", (inventory,))
    assert availability(app, inventory) == (1000, 0, 6, 994)
    assert db.one("SELECT bucket_count FROM booking.inventory") == 64
    assert db.one("SELECT count(*) FROM booking.inventory_buckets") == 64
    assert sqlstate_of(app, "SELECT api.set_capacity(%s, -1)", (inventory,)) == "22023"
    assert sqlstate_of(app, "SELECT api.set_capacity(%s, NULL)", (inventory,)) == "22004"
    assert sqlstate_of(app, "SELECT api.set_capacity(%s, 5)", (uuid.uuid4(),)) == "RB005"
    assert db.rows("SELECT count(*) FROM ops.oversold_inventory") == [(0,)]


# -- the sweeper and the purge -------------------------------------------------------------

def test_the_sweeper_expires_dead_holds_in_batches_and_keeps_the_rows(db, app):
    inventory = new_inventory(app, 100, ttl="1 second")
    live_inventory = new_inventory(app, 100)
    deadlines = [place(app, inventory, 1 + i % 3)[1] for i in range(25)]
    place(app, live_inventory, 5)
    wait_past(app, max(deadlines))
    result = db.one("CALL booking.sweep_expired_holds(NULL, 10)")
    assert (result["expired_holds"], result["batches"], result["units_returned"]) == (25, 3, sum(1 + i % 3 for i in range(25)))
    assert db.rows("SELECT status, count(*) FROM booking.holds GROUP BY 1 ORDER BY 1") == [("expired", 25), ("live", 1)]
    assert availability(app, inventory) == (100, 0, 0, 100)
    assert availability(app, live_inventory) == (100, 0, 5, 95)
    assert db.one("CALL booking.sweep_expired_holds()")["expired_holds"] == 0
    assert db.rows("SELECT count(*) FROM ops.oversold_inventory") == [(0,)]

    assert db.one("SELECT booking.purge_ended_holds('1 hour')")["deleted"] == 0
    assert db.one("SELECT booking.purge_ended_holds('0 seconds', 20)")["deleted"] == 20
    assert db.one("SELECT booking.purge_ended_holds('0 seconds')")["deleted"] == 5
    assert db.one("SELECT count(*) FROM booking.holds") == 1


def test_the_sweeper_cron_job_commits_per_batch_and_records_its_run(db, app):
    inventory = new_inventory(app, 10, ttl="1 second")
    _, expires_at = place(app, inventory, 3)
    wait_past(app, expires_at)
    command = db.one("SELECT command FROM (SELECT core.cron_command(jobname, job_function) AS command "
                     "FROM core.cron_jobs WHERE jobname = 'booking-sweep-holds') AS c")
    assert command == "CALL booking.sweep_holds_cron()"
    with connect(db.url) as conn:
        conn.execute(command)
    assert db.rows("SELECT last_status, last_result ->> 'expired_holds' FROM ops.cron_jobs "
                   "WHERE jobname = 'booking-sweep-holds'") == [("ok", "1")]
    assert availability(app, inventory) == (10, 0, 0, 10)


@pytest.mark.parametrize("again", [1, 3, 5])
def test_a_key_whose_hold_died_holds_again_and_units_add_up(db, app, again):
    inventory = new_inventory(app, 6, ttl="1 second")
    first, expires_at = place(app, inventory, 3, "alice", "cart-9")
    wait_past(app, expires_at)
    second, _ = place(app, inventory, again, "alice", "cart-9")
    assert second != first
    assert db.one("SELECT status FROM booking.holds WHERE hold_id = %s", (first,)) == "expired"
    assert availability(app, inventory) == (6, 0, again, 6 - again)
    assert db.rows("SELECT count(*) FROM ops.oversold_inventory") == [(0,)]
    assert app.execute("SELECT api.release_hold(%s)", (second,)).fetchone()[0] is True
    assert availability(app, inventory) == (6, 0, 0, 6)
    assert db.one("SELECT sum(free) FROM booking.inventory_buckets WHERE inventory_id = %s", (inventory,)) == 6


def test_a_key_whose_hold_died_may_hold_on_another_inventory(db, app):
    first_inventory = new_inventory(app, 4, ttl="1 second")
    second_inventory = new_inventory(app, 4)
    _, expires_at = place(app, first_inventory, 4, "alice", "cart-x")
    wait_past(app, expires_at)
    place(app, second_inventory, 2, "alice", "cart-x")
    assert availability(app, first_inventory) == (4, 0, 0, 4)
    assert db.one("SELECT sum(free) FROM booking.inventory_buckets WHERE inventory_id = %s", (first_inventory,)) == 4
    assert availability(app, second_inventory) == (4, 0, 2, 2)


@pytest.mark.parametrize("change, rule", [
    ("status = 'converted'", "an open hold has no ended_at, an ended one has one"),
    ("ended_at = now()", "an open hold has no ended_at, an ended one has one"),
    ("status = 'booked'", "a booked hold names its booking"),
])
def test_ops_broken_rows_shows_a_hold_changed_by_hand_against_its_rules(db, app, change, rule):
    """The rules between two columns are not table CHECKs (see V0007); the view finds a
    row that breaks one, as a DBA's hand-made UPDATE could."""
    hold_id, _ = place(app, new_inventory(app, 10), 1)
    assert db.rows("SELECT * FROM ops.broken_rows") == []
    with connect(db.url) as owner:
        owner.execute(f"UPDATE booking.holds SET {change} WHERE hold_id = %s", (hold_id,))
    assert db.rows("SELECT table_name, row_id, rule FROM ops.broken_rows") == [("booking.holds", str(hold_id), rule)]


@pytest.mark.parametrize("column, value", [
    ("quantity", "0"), ("quantity", "101"), ("status", "'lost'"), ("holder", "''"), ("extensions_used", "11"),
])
def test_the_domains_still_refuse_a_bad_value_written_by_hand(db, app, column, value):
    hold_id, _ = place(app, new_inventory(app, 10), 1)
    with connect(db.url) as owner:
        assert sqlstate_of(owner, f"UPDATE booking.holds SET {column} = {value} WHERE hold_id = %s", (hold_id,)) == "23514"
    assert db.one("SELECT (quantity, status, holder, extensions_used)::text FROM booking.holds WHERE hold_id = %s",
                  (hold_id,)) == "(1,live,alice,0)"


def test_a_failing_sweep_is_recorded_as_a_failed_cron_run_and_shows_in_health(db, app):
    inventory = new_inventory(app, 10, ttl="1 second")
    hold_id, expires_at = place(app, inventory, 3)
    wait_past(app, expires_at)
    with connect(db.url) as conn:
        conn.execute("CREATE FUNCTION core.test_explode() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'simulated sweep failure'; END $$")
        conn.execute("CREATE TRIGGER test_explode BEFORE UPDATE ON booking.holds "
                     "FOR EACH ROW EXECUTE FUNCTION core.test_explode()")
        conn.execute("CALL booking.sweep_holds_cron()")
    assert db.rows("SELECT last_status, last_error, failures FROM ops.cron_jobs "
                   "WHERE jobname = 'booking-sweep-holds'") == [("failed", "simulated sweep failure", 1)]
    assert db.one("SELECT api.health()")["checks"]["cron"]["jobs"]["booking-sweep-holds"]["status"] == "failed"
    assert db.one("SELECT status FROM booking.holds WHERE hold_id = %s", (hold_id,)) == "live"  # rolled back
