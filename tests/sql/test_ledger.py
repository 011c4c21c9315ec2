"""The double-entry ledger: one transaction per Stripe object, balanced, append-only."""

from __future__ import annotations

import random
import uuid

import psycopg
import pytest

from tests.pg import connect
from tests.sql.helpers import on_connections, sqlstate_of

POSTERS = {
    "charge": "ledger.post_charge(%s, %s, %s, %s)",
    "refund": "ledger.post_refund(%s, %s, 'pi_of_' || %s, %s, %s)",
    "dispute": "ledger.post_dispute(%s, %s, 'pi_of_' || %s, %s, %s)",
    "dispute_reversal": "ledger.post_dispute_reversal(%s, %s, 'pi_of_' || %s, %s, %s)",
}


def post(conn, kind, booking_id, object_id, amount, currency="usd"):
    args = (booking_id, object_id, amount, currency) if kind == "charge" else \
        (booking_id, object_id, str(booking_id), amount, currency)
    return conn.execute(f"SELECT {POSTERS[kind]}", args).fetchone()[0]


def test_each_kind_posts_balanced_lines_once(db):
    booking = uuid.uuid4()
    with connect(db.url) as conn:
        for kind in POSTERS:
            assert post(conn, kind, booking, f"obj_{kind}", 1000) is not None
            assert post(conn, kind, booking, f"obj_{kind}", 1000) is None  # the same object again
    assert db.one("SELECT count(*) FROM ledger.transactions") == 4
    assert db.one("SELECT count(*) FROM ledger.lines") == 8
    assert db.rows("SELECT * FROM ops.ledger_imbalances") == []
    balances = dict(((a, c), b) for a, c, b in db.rows("SELECT account, currency, balance FROM ops.ledger_balances"))
    # charge +1000, refund -1000, dispute -1000, reversal +1000 at Stripe
    assert balances[("cash_at_stripe", "usd")] == 0
    assert sum(balances.values()) == 0
    assert db.rows("SELECT paid, refunded, disputed, net FROM ops.booking_ledger") == [(1000, 1000, 0, 0)]


def test_the_same_object_with_other_figures_is_rx001(db):
    with connect(db.url) as conn:
        post(conn, "charge", uuid.uuid4(), "pi_x", 1000)
        assert sqlstate_of(conn, "SELECT ledger.post_charge(%s, 'pi_x', 999, 'usd')", (uuid.uuid4(),)) == "RX001"
    assert db.one("SELECT count(*) FROM ledger.transactions") == 1


@pytest.mark.parametrize("kind", ["charge", "refund"])
def test_twenty_concurrent_posts_of_one_object_leave_one_transaction(db, kind):
    booking = uuid.uuid4()
    results, errors = on_connections(db.url, 20, lambda c: post(c, kind, booking, f"{kind}_concurrent", 4200))
    assert errors == []
    assert sum(1 for r in results if r is not None) == 1
    assert db.one("SELECT count(*) FROM ledger.transactions") == 1
    assert db.one("SELECT count(*) FROM ledger.lines") == 2


def test_ledger_rows_cannot_be_updated_deleted_or_truncated_even_by_the_owner(db):
    with connect(db.url) as conn:
        post(conn, "charge", uuid.uuid4(), "pi_locked", 500)
        conn.execute("SET ROLE booking_owner")
        for sql in ("UPDATE ledger.lines SET amount = amount + 1", "DELETE FROM ledger.lines",
                    "UPDATE ledger.transactions SET amount = 1", "DELETE FROM ledger.transactions",
                    "TRUNCATE ledger.lines CASCADE", "TRUNCATE ledger.transactions CASCADE"):
            assert sqlstate_of(conn, sql) == "RX001", sql
    assert db.one("SELECT sum(amount) FROM ledger.lines") == 0
    assert db.one("SELECT count(*) FROM ledger.lines") == 2


def test_an_unbalanced_transaction_is_refused_at_commit(db):
    with connect(db.url) as conn:
        conn.execute("SET ROLE booking_owner")
        with pytest.raises(psycopg.Error) as info:
            with conn.transaction():
                txn = conn.execute(
                    "INSERT INTO ledger.transactions (kind, stripe_object_id, currency, amount) "
                    "VALUES ('charge', 'pi_bad', 'usd', 100) RETURNING txn_id").fetchone()[0]
                conn.execute("INSERT INTO ledger.lines (txn_id, account, currency, amount) "
                             "VALUES (%s, 'cash_at_stripe', 'usd', 100), (%s, 'booking_revenue', 'usd', -99)",
                             (txn, txn))
        assert info.value.sqlstate == "RX001"
        with pytest.raises(psycopg.Error) as info:
            with conn.transaction():
                conn.execute("INSERT INTO ledger.transactions (kind, stripe_object_id, currency, amount) "
                             "VALUES ('charge', 'pi_nolines', 'usd', 100)")
        assert info.value.sqlstate == "RX001"
    assert db.one("SELECT count(*) FROM ledger.transactions") == 0


@pytest.mark.slow
def test_a_randomized_run_of_thousands_of_postings_stays_balanced(db):
    rng = random.Random(7)
    bookings = [uuid.uuid4() for _ in range(200)]
    objects = []
    posted = 0
    with connect(db.url) as conn:
        for i in range(3000):
            if objects and rng.random() < 0.3:
                kind, booking, obj, amount, currency = rng.choice(objects)  # a replay of an earlier object
            else:
                kind = rng.choice(list(POSTERS))
                booking, obj = rng.choice(bookings), f"obj_{i}"
                amount, currency = rng.randint(1, 10**9), rng.choice(["usd", "eur", "jpy"])
                objects.append((kind, booking, obj, amount, currency))
            if post(conn, kind, booking, obj, amount, currency) is not None:
                posted += 1
    assert posted == len(objects)
    assert db.one("SELECT count(*) FROM ledger.transactions") == len(objects)
    assert db.rows("SELECT * FROM ops.ledger_imbalances") == []
    assert db.rows("SELECT currency, sum(balance) FROM ops.ledger_balances GROUP BY currency HAVING sum(balance) <> 0") == []
