"""The application side of the versioned catalog cache (README, "Catalog cache"): the
pattern that tests/cache/test_catalog_cache_redis.py and the search-spike bench run.

Key: catalog:<version>:<hash of the query>. Each read asks PostgreSQL for the current
'catalog' version (a primary-key lookup); on a hit the rows come from Redis, on a miss
api.catalog returns the rows and their version from one snapshot, stored under that
version. A commit that changes a price, a capacity or a sold-out state bumps the version
in the same transaction, so no read that starts after the commit can find the old entry.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager

import redis

from tests.pg import wait_until_up

VERSION_SQL = "SELECT version FROM api.cache_versions(ARRAY['catalog'])"
CATALOG_SQL = "SELECT * FROM api.catalog(%s, %s)"
COLUMNS = ("inventory_id", "sku", "unit_amount", "currency", "capacity", "available", "sold_out", "version")


class SharedVersion:
    """One 'catalog' version query for all the reads of a process that arrived before it
    was sent (as group commit shares a flush). Still exact: each read uses a version read
    in a snapshot taken after the read began, so after every commit that had returned."""

    def __init__(self, conn):
        self.conn = conn
        self.cond = threading.Condition()
        self.sent = 0  # generation of the last query sent
        self.done = 0  # generation whose answer is in self.version
        self.busy = False
        self.version = None

    def current(self) -> int:
        with self.cond:
            needed = self.sent + 1  # a query sent after this moment
            while self.done < needed:
                if self.busy:
                    self.cond.wait()
                    continue
                self.busy = True
                self.sent += 1
                generation = self.sent
                self.cond.release()
                try:
                    (version,) = self.conn.execute(VERSION_SQL).fetchone()
                finally:
                    self.cond.acquire()
                    self.busy = False
                    self.cond.notify_all()
                self.version, self.done = version, generation
            return self.version


class CatalogCache:
    def __init__(self, conn, client: redis.Redis, ttl_seconds: int = 300, shared: SharedVersion | None = None):
        self.conn = conn  # autocommit: each statement its own snapshot
        self.redis = client
        self.ttl = ttl_seconds  # dead versions' keys just age out
        self.shared = shared
        self.hits = 0
        self.misses = 0

    def read(self, prefix: str = "", limit: int = 100) -> tuple[int, list[dict]]:
        version, body = self.read_body(prefix, limit)
        return version, json.loads(body)

    def read_body(self, prefix: str = "", limit: int = 100) -> tuple[int, bytes]:
        """The JSON body of the answer, as an HTTP handler would send it."""
        query_hash = hashlib.sha256(json.dumps([prefix, limit]).encode()).hexdigest()[:32]
        if self.shared is not None:
            version = self.shared.current()
        else:
            (version,) = self.conn.execute(VERSION_SQL).fetchone()
        cached = self.redis.get(f"catalog:{version}:{query_hash}")
        if cached is not None:
            self.hits += 1
            return version, cached
        self.misses += 1
        rows = [dict(zip(COLUMNS, r)) for r in self.conn.execute(CATALOG_SQL, (prefix, limit)).fetchall()]
        for r in rows:
            r["inventory_id"] = str(r["inventory_id"])
        # The rows' own version (same snapshot). With no rows, the version read before them:
        # an entry under an older version than its data is only ever dead, never stale.
        data_version = rows[0]["version"] if rows else version
        body = json.dumps(rows).encode()
        self.redis.set(f"catalog:{data_version}:{query_hash}", body, ex=self.ttl)
        return data_version, body


@contextmanager
def redis_server(port: int):
    """A throwaway redis-server on 127.0.0.1:port, no persistence; stopped by pid."""
    workdir = tempfile.mkdtemp(prefix="redis-")
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", workdir, "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as client:
            wait_until_up(client.ping, proc, "redis-server", seconds=10, not_yet=(redis.ConnectionError,))
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
