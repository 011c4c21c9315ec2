"""A hot on-sale: 64 connections at once on one inventory of 100, never oversold."""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest

from tests.pg import connect
from tests.sql.helpers import on_connections

CLIENTS = 64


def run_clients(url: str, work, seconds: float | None = None):
    """Runs work(conn, rng, stop) on CLIENTS connections started together; returns errors."""
    conns = [connect(url) for _ in range(CLIENTS)]
    barrier = threading.Barrier(CLIENTS + 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def client(i, conn):
        rng = random.Random(i)
        try:
            barrier.wait()
            work(conn, rng, stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i, c)) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    barrier.wait()
    if seconds is not None:
        time.sleep(seconds)
        stop.set()
    for t in threads:
        t.join(timeout=120)
    for c in conns:
        c.close()
    return errors


def sample(db_url: str, inventory_id) -> dict:
    """One consistent look (one snapshot) at the inventory, by two independent routes."""
    with connect(db_url) as conn:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            capacity, sold, held, available = conn.execute(
                "SELECT * FROM api.availability(%s)", (inventory_id,)
            ).fetchone()
            free, bucket_sold, open_units, min_free = conn.execute(
                """
                SELECT sum(b.free), sum(b.sold),
                       (SELECT coalesce(sum(h.quantity), 0) FROM booking.holds AS h
                        WHERE h.inventory_id = %(i)s AND h.status IN ('live', 'booked')),
                       min(b.free)
                FROM booking.inventory_buckets AS b WHERE b.inventory_id = %(i)s
                """,
                {"i": inventory_id},
            ).fetchone()
            oversold = conn.execute("SELECT count(*) FROM ops.oversold_inventory").fetchone()[0]
            oversold += conn.execute("SELECT count(*) FROM ops.broken_rows").fetchone()[0]
    return dict(capacity=capacity, sold=sold, held=held, available=available, free=free,
                bucket_sold=bucket_sold, open_units=open_units, min_free=min_free, oversold=oversold)


def check(s: dict):
    assert s["sold"] + s["held"] <= s["capacity"], s
    assert s["available"] >= 0 and s["sold"] + s["held"] + s["available"] == s["capacity"], s
    # Units are conserved: every unit is free in a bucket, sold, or in an open hold.
    assert s["free"] + s["bucket_sold"] + s["open_units"] == s["capacity"], s
    assert s["min_free"] >= 0 and s["oversold"] == 0, s


@pytest.mark.slow
def test_64_clients_with_releases_expiries_and_the_sweeper_never_oversell(db):
    with connect(db.app_url) as conn:
        inventory = conn.execute("SELECT api.create_inventory('hot-show', 100, 5000, 'usd', '2 seconds')").fetchone()[0]
    counts = {"held": 0, "rb001": 0, "released": 0}
    lock = threading.Lock()

    def buyer(conn, rng, stop):
        while not stop.is_set():
            quantity = rng.randint(1, 4)
            try:
                hold_id, _ = conn.execute(
                    "SELECT * FROM api.place_hold(%s, %s, %s)", (inventory, quantity, f"buyer-{id(conn)}")
                ).fetchone()
            except psycopg.Error as exc:
                assert exc.sqlstate == "RB001", exc
                with lock:
                    counts["rb001"] += 1
                time.sleep(rng.random() * 0.05)
                continue
            with lock:
                counts["held"] += 1
            if rng.random() < 0.3:  # some buyers give up at once, the rest let the hold expire
                released = conn.execute("SELECT api.release_hold(%s)", (hold_id,)).fetchone()[0]
                if not released:  # only if this thread stalled past the 2 s deadline
                    status = conn.execute("SELECT status FROM api.hold_status(%s)", (hold_id,)).fetchone()[0]
                    assert status == "expired", (hold_id, status)
                    continue
                with lock:
                    counts["released"] += 1

    samples = []
    sampling = threading.Event()

    def sampler():
        while not sampling.is_set():
            samples.append(sample(db.url, inventory))

    swept = []

    def sweeper():  # the cron job's work, running all the time, in small batches
        with connect(db.url) as conn:
            while not sampling.is_set():
                swept.append(conn.execute("CALL booking.sweep_expired_holds(NULL, 20, '1 second', 0)").fetchone()[0])
                time.sleep(0.05)

    helpers = [threading.Thread(target=sampler), threading.Thread(target=sweeper)]
    for t in helpers:
        t.start()
    errors = run_clients(db.app_url, buyer, seconds=6)
    sampling.set()
    for t in helpers:
        t.join()
    assert errors == []
    assert sum(r["expired_holds"] for r in swept) > 0
    assert len(samples) > 20
    for s in samples:
        check(s)
    # Demand exceeded supply and holds expired and were reclaimed by new buyers.
    assert counts["rb001"] > 0 and counts["released"] > 0 and counts["held"] > 100
    assert db.one("SELECT count(*) FROM booking.holds WHERE status = 'expired'") > 0
    check(sample(db.url, inventory))


@pytest.mark.slow
def test_64_greedy_clients_take_exactly_the_whole_capacity(db):
    with connect(db.app_url) as conn:
        inventory = conn.execute("SELECT api.create_inventory('last-seats', 100, 5000, 'usd')").fetchone()[0]
    taken = []
    lock = threading.Lock()

    def greedy(conn, rng, stop):
        quantity = rng.randint(1, 4)
        while quantity:
            try:
                conn.execute("SELECT * FROM api.place_hold(%s, %s, 'greedy')", (inventory, quantity))
                with lock:
                    taken.append(quantity)
            except psycopg.Error as exc:
                assert exc.sqlstate == "RB001", exc
                quantity -= 1  # ask for less until not even one is left

    assert run_clients(db.app_url, greedy) == []
    assert sum(taken) == 100
    s = sample(db.url, inventory)
    check(s)
    assert (s["held"], s["available"]) == (100, 0)


def test_twenty_concurrent_requests_with_one_hold_key_get_one_hold(db):
    with connect(db.app_url) as conn:
        inventory = conn.execute("SELECT api.create_inventory('keyed', 100, 5000, 'usd')").fetchone()[0]
    answers, errors = on_connections(db.app_url, 20, lambda c: c.execute(
        "SELECT * FROM api.place_hold(%s, 2, 'alice', 'double-click')", (inventory,)).fetchone())
    assert errors == []
    assert len(set(answers)) == 1 and len(answers) == 20
    assert db.one("SELECT count(*) FROM booking.holds") == 1
    check(sample(db.url, inventory))
