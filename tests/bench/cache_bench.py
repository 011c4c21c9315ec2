"""make bench (catalog cache): the search spike. Many clients read api.catalog through the
versioned Redis cache (tests/cache/catalog_cache.py) while 32 clients place holds on a hot
inventory, beside the same reads straight from PostgreSQL, in one run; and place_hold
throughput with the version triggers on and off.

    .venv/bin/python -m tests.bench.cache_bench [--seconds N] [--readers N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import threading
import time

import redis

from tests.bench.common import bench_cluster, headline, pgbench, table
from tests.bench.holds_bench import PLACE_HOLD_SCRIPT, new_inventory
from tests.cache.catalog_cache import CATALOG_SQL, CatalogCache, SharedVersion, redis_server
from tests.pg import connect, wait_until
from tests.shim.server import free_port

CATALOG_SIZE = 100  # inventories the search returns, 64 buckets each
PRICE_CHANGES_PER_SECOND = 5  # bumps during the spike: the cache must miss now and then
VERSION_TRIGGERS = (
    ("booking.inventory_buckets", "buckets_note_crossing"),
    ("booking.inventory", "inventory_note_change"),
    ("booking.cache_notes", "cache_notes_announce_at_commit"),
)


def set_version_triggers(url: str, enabled: bool) -> None:
    with connect(url) as conn:
        for tbl, trigger in VERSION_TRIGGERS:
            conn.execute(f"ALTER TABLE {tbl} {'ENABLE' if enabled else 'DISABLE'} TRIGGER {trigger}")


def version_trigger_calls(url: str, defines: dict[str, str]) -> tuple[int, int]:
    """(calls of the version trigger functions, holds placed) over one more 2 s run with the
    triggers on, counted by pg_stat_user_functions: the count that says what the timing of
    the on/off runs can only suggest. track_functions is on for this run only (it costs
    every PL/pgSQL call a little, on and off alike)."""
    def calls() -> int:
        with connect(url) as conn:
            return int(conn.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE schemaname = 'booking'"
                " AND funcname IN ('note_row_change', 'announce_changes')"
            ).fetchone()[0])

    with connect(url) as conn:
        conn.execute("ALTER DATABASE bench SET track_functions = 'pl'")
    try:
        with connect(url) as conn:
            conn.execute("SELECT pg_stat_reset()")
            holds_before = conn.execute("SELECT count(*) FROM booking.holds").fetchone()[0]
        pgbench(url, PLACE_HOLD_SCRIPT, 32, 2, defines=defines)
        with connect(url) as conn:
            placed = conn.execute("SELECT count(*) FROM booking.holds").fetchone()[0] - holds_before
            # A session hands in its counts as it exits: wait for pgbench's to be gone.
            wait_until(lambda: conn.execute(
                "SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'bench'").fetchone()[0], 30)
        time.sleep(1)
        fired = calls()
        # The count can move: one price change, in a session of its own, runs them.
        with connect(url) as conn:
            conn.execute("SELECT api.set_unit_amount(%s, 5001)", (defines["inv"],))
        if not wait_until(lambda: calls() > fired, 10):
            raise RuntimeError("pg_stat_user_functions did not count the version triggers of a price change")
    finally:
        with connect(url) as conn:
            conn.execute("ALTER DATABASE bench RESET track_functions")
    return fired, int(placed)


def _reader_process(url, port, mode, threads, stop, counter, out):
    """One application process: `threads` reader threads; in 'cached' mode they share one
    SharedVersion and read through Redis, in 'direct' mode they call api.catalog."""
    shared = SharedVersion(connect(url)) if mode == "cached" else None
    caches = []
    errors = []

    def reader():
        try:
            with connect(url) as conn:
                cache = CatalogCache(conn, redis.Redis(host="127.0.0.1", port=port), shared=shared)
                caches.append(cache)
                while not stop.is_set():
                    # Both ways end with the JSON body an HTTP handler would send.
                    if mode == "cached":
                        cache.read_body("spike-", CATALOG_SIZE)
                    else:
                        json.dumps([[str(r[0]), *r[1:]] for r in
                                    conn.execute(CATALOG_SQL, ("spike-", CATALOG_SIZE)).fetchall()]).encode()
                    with counter.get_lock():
                        counter.value += 1
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            errors.append(repr(exc))

    workers = [threading.Thread(target=reader) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    out.put((sum(c.hits for c in caches), sum(c.misses for c in caches), errors))


def readers_during(url: str, port: int, mode: str, readers: int, processes: int, seconds_fn):
    """Runs `readers` reader threads spread over `processes` processes (so that the cached
    path is not held to one Python interpreter's GIL) while seconds_fn() runs, plus a
    thread changing one catalog price PRICE_CHANGES_PER_SECOND times a second.
    Returns (seconds_fn's result, reads per second, hits, misses)."""
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    counter = ctx.Value("q", 0)
    out = ctx.Queue()
    procs = [ctx.Process(target=_reader_process,
                         args=(url, port, mode, readers // processes, stop, counter, out))
             for _ in range(processes)]
    pricer_stop = threading.Event()

    def pricer():
        rng = random.Random(1)
        with connect(url) as conn:
            ids = [r[0] for r in conn.execute(CATALOG_SQL, ("spike-", CATALOG_SIZE)).fetchall()]
            while not pricer_stop.wait(1 / PRICE_CHANGES_PER_SECOND):
                conn.execute("SELECT api.set_unit_amount(%s, %s)", (rng.choice(ids), rng.randint(1000, 9999)))

    price_thread = threading.Thread(target=pricer)
    try:
        for p in procs:
            p.start()
        price_thread.start()
        time.sleep(1.0)  # connected and warm
        before = counter.value
        started = time.perf_counter()
        result = seconds_fn()
        elapsed = time.perf_counter() - started
        done = counter.value - before
    finally:
        stop.set()
        pricer_stop.set()
        if price_thread.is_alive() or price_thread.ident:
            price_thread.join(timeout=30)
    hits = misses = 0
    errors = []
    for _ in procs:
        h, m, e = out.get(timeout=60)
        hits, misses, errors = hits + h, misses + m, errors + e
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    if errors:
        raise RuntimeError(errors[:3])
    return result, done / elapsed, hits, misses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--processes", type=int, default=4, help="application processes the readers are in")
    parser.add_argument("--rounds", type=int, default=4, help="ABBA rounds of the versions on/off comparison")
    args = parser.parse_args()
    s = args.seconds
    with bench_cluster() as url, redis_server(free_port()) as port:
        with connect(url) as conn:
            for i in range(CATALOG_SIZE):
                conn.execute("SELECT api.create_inventory(%s, 1000, 2500, 'usd')", (f"spike-{i:03}",))
            conn.execute("ANALYZE")
        hot = new_inventory(url, "hot-on-sale")
        defines = {"inv": hot}

        # Versions on and off in ABBA order (against drift: the holds table grows, and the
        # machine is shared), compared by their medians. Two runs of eight 3 s runs gave
        # 90.5% and 98.9% (docs/BENCHMARKS.md): the spread of single runs is larger than
        # the 5% asked about, so there are args.rounds ABBA rounds.
        on_off = {True: [], False: []}
        for enabled in (True, False, False, True) * args.rounds:
            set_version_triggers(url, enabled)
            on_off[enabled].append(pgbench(url, PLACE_HOLD_SCRIPT, 32, max(2, s // 2), defines=defines))
        set_version_triggers(url, True)
        alone = statistics.median(on_off[True])
        without = statistics.median(on_off[False])
        fired, placed = version_trigger_calls(url, defines)

        def holds():
            return pgbench(url, PLACE_HOLD_SCRIPT, 32, s, defines=defines)

        with_cached, cached_rps, hits, misses = readers_during(
            url, port, "cached", args.readers, args.processes, holds)
        with_direct, direct_rps, _, _ = readers_during(url, port, "direct", args.readers, args.processes, holds)

        headline("catalog reads through Redis / straight from PostgreSQL", cached_rps / direct_rps, 5.0, "x")
        headline("place_hold with version triggers / without (medians)", alone / without, 0.95, "%")
        table(f"search spike: {args.readers} clients ({args.processes} processes) reading api.catalog ({CATALOG_SIZE} inventories) while 32 "
              f"clients place holds on one inventory, {s} s each, {PRICE_CHANGES_PER_SECOND} price changes/s "
              f"(target: cached >= 5x direct)",
              ["reads", "reads/s", "hit ratio", "place_hold tps meanwhile", "vs no readers"],
              [["through Redis (versioned keys)", f"{cached_rps:,.0f}", f"{hits / max(hits + misses, 1):.1%}",
                f"{with_cached:,.0f}", f"{with_cached / alone:.0%}"],
               ["straight from PostgreSQL", f"{direct_rps:,.0f}", "-", f"{with_direct:,.0f}",
                f"{with_direct / alone:.0%}"],
               ["ratio cached / direct", f"{cached_rps / direct_rps:.1f}x", "", "", ""]])
        table(f"api.place_hold, 32 clients, no readers, {max(2, s // 2)} s per run, ABBA order "
              f"(target: on within 5% of off)",
              ["version triggers", "runs tps", "median tps", "vs off"],
              [["on", " / ".join(f"{x:,.0f}" for x in on_off[True]), f"{alone:,.0f}", f"{alone / without:.1%}"],
               ["off", " / ".join(f"{x:,.0f}" for x in on_off[False]), f"{without:,.0f}", "100%"]])
        print(f"version trigger functions run during {placed:,} holds with the triggers on (an ordinary hold "
              f"crosses no sold-out state; each trigger's WHEN is checked without a call): {fired}")
        with connect(url) as conn:
            (version,) = conn.execute("SELECT version FROM api.cache_versions(ARRAY['catalog'])").fetchone()
            oversold = conn.execute("SELECT count(*) FROM ops.oversold_inventory").fetchone()[0]
        print(f"\ncatalog version at the end: {version}; ops.oversold_inventory rows: {oversold}")


if __name__ == "__main__":
    main()
