"""The versioned catalog cache with a real Redis: under concurrent price and capacity
changes and holds that sell an inventory out and back, no read that starts after a commit
returns what that commit replaced."""

from __future__ import annotations

import bisect
import threading
import time

import psycopg
import pytest
import redis

from tests.cache.catalog_cache import CatalogCache, SharedVersion, redis_server
from tests.pg import connect
from tests.shim.server import free_port

SECONDS = 8


def new_inventory(conn, sku, capacity, amount=1000):
    return str(conn.execute("SELECT api.create_inventory(%s, %s, %s, 'usd', '1 day')",
                            (sku, capacity, amount)).fetchone()[0])


@pytest.mark.slow
@pytest.mark.parametrize("version_read", ["per read", "shared"])
def test_no_read_after_a_commit_returns_what_the_commit_replaced(db, version_read):
    with connect(db.app_url) as conn:
        priced = new_inventory(conn, "spike-priced", 100)
        sized = new_inventory(conn, "spike-sized", 100)
        flipping = new_inventory(conn, "spike-flipping", 8)
        busy = new_inventory(conn, "spike-busy", 400)
    stop = threading.Event()
    errors: list[BaseException] = []
    # Per kind: commits in order, as (started, returned, value). Prices and capacities
    # only go up, so an older value is one a commit replaced.
    prices: list[tuple[float, float, int]] = []
    capacities: list[tuple[float, float, int]] = []
    sold_out: list[tuple[float, float, bool]] = [(0.0, 0.0, False)]
    reads: list[tuple[float, float, dict]] = []
    caches: list[CatalogCache] = []

    def guarded(fn):
        def run(*args):
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
                stop.set()
        return run

    @guarded
    def price_writer():
        with connect(db.app_url) as c:
            price = 1000
            while not stop.is_set():
                price += 1
                started = time.monotonic()
                c.execute("SELECT api.set_unit_amount(%s, %s)", (priced, price))
                prices.append((started, time.monotonic(), price))
                time.sleep(0.002)

    @guarded
    def capacity_writer():
        with connect(db.app_url) as c:
            capacity = 100
            while not stop.is_set():
                capacity += 1
                started = time.monotonic()
                c.execute("SELECT api.set_capacity(%s, %s)", (sized, capacity))
                capacities.append((started, time.monotonic(), capacity))
                time.sleep(0.002)

    @guarded
    def flipper():
        # The only writer of this inventory: all 8 units held (sold out), then released.
        with connect(db.app_url) as c:
            while not stop.is_set():
                started = time.monotonic()
                (hold,) = c.execute("SELECT hold_id FROM api.place_hold(%s, 8, 'flipper')", (flipping,)).fetchone()
                sold_out.append((started, time.monotonic(), True))
                time.sleep(0.003)
                started = time.monotonic()
                c.execute("SELECT api.release_hold(%s)", (hold,))
                sold_out.append((started, time.monotonic(), False))
                time.sleep(0.003)

    @guarded
    def buyer(i):
        # Holds on a busy inventory (selling it out now and then): load, and bumps from
        # buckets crossing 0.
        with connect(db.app_url) as c:
            held = []
            while not stop.is_set():
                try:
                    held.append(c.execute("SELECT hold_id FROM api.place_hold(%s, 4, %s)",
                                          (busy, f"b{i}")).fetchone()[0])
                except psycopg.Error as exc:
                    if exc.sqlstate != "RB001":
                        raise
                    for h in held:
                        c.execute("SELECT api.release_hold(%s)", (h,))
                    held.clear()

    shared_conn = connect(db.app_url)
    shared = SharedVersion(shared_conn) if version_read == "shared" else None

    def reader(port):
        with connect(db.app_url) as c, redis.Redis(host="127.0.0.1", port=port) as client:
            cache = CatalogCache(c, client, shared=shared)
            caches.append(cache)
            while not stop.is_set():
                started = time.monotonic()
                _, rows = cache.read("spike-")
                reads.append((started, time.monotonic(), {r["sku"]: r for r in rows}))

    with redis_server(free_port()) as port:
        threads = [threading.Thread(target=f) for f in (price_writer, capacity_writer, flipper)]
        threads += [threading.Thread(target=buyer, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=guarded(reader), args=(port,)) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(SECONDS)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    shared_conn.close()
    assert not errors, errors[:3]

    def last_committed_before(commits, t):
        """The value of the last commit that returned before t (None if none)."""
        ends = [e for _, e, _ in commits]
        i = bisect.bisect_left(ends, t)
        return commits[i - 1][2] if i else None

    stale = []
    for started, ended, rows in reads:
        for sku, commits, column in (("spike-priced", prices, "unit_amount"),
                                     ("spike-sized", capacities, "capacity")):
            floor = last_committed_before(commits, started)
            if floor is not None and rows[sku][column] < floor:
                stale.append((sku, column, floor, rows[sku][column]))
        # sold_out flips both ways: exact when no flip started during the read.
        ends = [e for _, e, _ in sold_out]
        i = bisect.bisect_left(ends, started)
        current = sold_out[i - 1]
        following = sold_out[i] if i < len(sold_out) else None
        if following is None or following[0] > ended:
            if rows["spike-flipping"]["sold_out"] != current[2]:
                stale.append(("spike-flipping", "sold_out", current[2], rows["spike-flipping"]["sold_out"]))
    hits = sum(c.hits for c in caches)
    misses = sum(c.misses for c in caches)
    print(f"reads {len(reads)}, hits {hits}, misses {misses}, price commits {len(prices)}, "
          f"capacity commits {len(capacities)}, sold-out flips {len(sold_out) - 1}")
    assert stale == [], stale[:5]
    # The run exercised what it claims to: many commits of each kind, and the cache served.
    assert len(prices) > 50 and len(capacities) > 50 and len(sold_out) > 50
    assert hits > 100 and misses > 50, (hits, misses)
