"""Small helpers shared by the SQL tests."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from tests.pg import connect


def sqlstate_of(conn, sql, params=None) -> str:
    with pytest.raises(psycopg.Error) as info:
        with conn.transaction():
            conn.execute(sql, params)
    return info.value.sqlstate


def new_inventory(conn, capacity=10, ttl="15 minutes", amount=2500, currency="usd", sku=None,
                  extension="10 minutes", max_extensions=1):
    return conn.execute(
        "SELECT api.create_inventory(%s, %s, %s, %s, %s::interval, %s::interval, %s)",
        (sku or f"sku-{uuid.uuid4().hex[:8]}", capacity, amount, currency, ttl, extension, max_extensions),
    ).fetchone()[0]


def wait_past(conn, deadline) -> None:
    """Waits, by the database's clock, until just after `deadline`."""
    while conn.execute("SELECT clock_timestamp() <= %s", (deadline,)).fetchone()[0]:
        time.sleep(0.02)


def place(conn, inventory_id, quantity, holder="alice", key=None):
    return conn.execute("SELECT * FROM api.place_hold(%s, %s, %s, %s)", (inventory_id, quantity, holder, key)).fetchone()


def on_connections(url: str, n: int, fn):
    """Opens n connections to url, runs fn(conn) on all of them at the same moment (at_once),
    closes them; returns (results, errors)."""
    conns = [connect(url) for _ in range(n)]
    try:
        return at_once(conns, fn)
    finally:
        for conn in conns:
            conn.close()


def at_once(conns, fn):
    """Runs fn(conn) on every connection at the same moment; returns (results, errors)."""
    barrier = threading.Barrier(len(conns))
    results, errors = [], []

    def run(conn):
        try:
            barrier.wait()
            results.append(fn(conn))
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors
