"""Small helpers shared by the SQL tests."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest


def sqlstate_of(conn, sql, params=None) -> str:
    with pytest.raises(psycopg.Error) as info:
        with conn.transaction():
            conn.execute(sql, params)
    return info.value.sqlstate


def new_inventory(conn, capacity=10, ttl="15 minutes", amount=2500, currency="usd", sku=None):
    return conn.execute(
        "SELECT api.create_inventory(%s, %s, %s, %s, %s::interval)",
        (sku or f"sku-{uuid.uuid4().hex[:8]}", capacity, amount, currency, ttl),
    ).fetchone()[0]


def place(conn, inventory_id, quantity, holder="alice", key=None):
    return conn.execute("SELECT * FROM api.place_hold(%s, %s, %s, %s)", (inventory_id, quantity, holder, key)).fetchone()


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
