"""Crash tests' shared parts: a cluster of their own that may be crashed, a load of signed
payment webhooks delivered as Stripe delivers them (resent until answered 200), and the
checks that must hold afterwards (the shim process they kill: tests/shim/server.py).

The failover test (tests/failover.py) records its answers as Attempts too.

The session cluster (tests/conftest.py) is shared by every test: never crash it. A
CrashableCluster is a second one, started by testing.postgresql like the first, whose
postmaster is stopped with `pg_ctl -m immediate` (no checkpoint, every backend killed:
the next start runs crash recovery) and started again on the same port.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from tests.bench.common import make_bookings, payment_event
from tests.pg import (
    LOGINS, ROOT, Database, connect, database_from_template, migrate, start_cluster, url_for,
)
from tests.stripe_events import encode, sign

TEMPLATE = "crash_template"


class CrashableCluster:
    """A PostgreSQL 15 cluster of its own (pg_cron loaded, fsync on as in production), with
    the duty logins and a migrated template database."""

    def __init__(self):
        self.pg = start_cluster(fsync=True)
        self.port = self.pg.settings["port"]
        self.data = os.path.join(self.pg.base_dir, "data")
        self.base_url = self.pg.url()
        with connect(url_for(self.base_url, "postgres")) as conn:
            conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
        migrate(url_for(self.base_url, TEMPLATE))  # bootstrap.sql creates the duty roles
        with connect(url_for(self.base_url, "postgres")) as conn:
            for login, role in LOGINS.items():
                conn.execute(f"CREATE ROLE {login} LOGIN")
                conn.execute(f"GRANT {role} TO {login}")

    @property
    def postmaster_pid(self) -> int | None:
        return self.pg.server_pid if self.is_up() else None

    def is_up(self) -> bool:
        return bool(self.pg.is_alive())

    def crash(self) -> float:
        """Stops the postmaster and every backend at once, as a crash does (no checkpoint,
        no client told); returns time.monotonic() when it was down."""
        subprocess.run([str(ROOT / "scripts" / "pgrun"), "pg_ctl", "-D", self.data, "-m", "immediate", "-w",
                        "-t", "30", "stop"], check=True, capture_output=True, timeout=60)
        down = time.monotonic()
        self.pg.child_process.wait(timeout=30)
        # testing.postgresql starts the server again only when it holds no process.
        self.pg.child_process = None
        return down

    def start(self) -> float:
        """Starts the server on the same port (crash recovery first); returns
        time.monotonic() when it accepted connections."""
        self.pg.start()
        return time.monotonic()

    @contextmanager
    def database(self):
        """A fresh migrated database (a copy of the template); the server must be up."""
        if not self.is_up():
            self.start()
        with database_from_template(self.base_url, TEMPLATE) as db:
            yield db

    def stop(self) -> None:
        if self.pg.child_process is not None and self.pg.child_process.poll() is not None:
            self.pg.child_process = None
        self.pg.stop()


@dataclass
class Attempt:
    event_id: str
    sent: float  # time.monotonic() when the request went out
    received: float  # when its answer (or the error) came back
    status: int  # the HTTP status, or 0: no HTTP answer
    error: str = ""  # for status 0: the transport error (refused, closed, timeout ...)


def seconds_unavailable(attempts: list[Attempt], since: float) -> float | None:
    """From the first answer after `since` that was not 200 (a request in flight at `since`
    counts) to the first 200 of a request sent after it; 0.0 if every answer since was 200,
    None if no 200 came after."""
    failed = [a.received for a in attempts if a.status != 200 and a.received > since]
    if not failed:
        return 0.0
    first_failed = min(failed)
    ok = [a.received for a in attempts if a.status == 200 and a.sent > first_failed]
    return min(ok) - first_failed if ok else None


@dataclass
class Load:
    """Payment events for `bookings`, each delivered until answered 200 (Stripe resends a
    delivery that was not answered 2xx, later)."""

    bookings: dict[str, dict]  # booking_id -> its payment_intent.succeeded event
    attempts: list[Attempt] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)  # event ids answered 200 at least once

    @property
    def events(self) -> dict[str, dict]:
        return {e["id"]: e for e in self.bookings.values()}

    @property
    def statuses(self) -> Counter:
        return Counter(a.status for a in self.attempts)

    @property
    def errors(self) -> Counter:
        return Counter(a.error for a in self.attempts if a.status == 0)

    def pending(self) -> list[dict]:
        return [e for e in self.bookings.values() if e["id"] not in self.acknowledged]

    def seconds_unavailable(self, since: float) -> float | None:
        return seconds_unavailable(self.attempts, since)

    def first_200_since(self, since: float) -> float:
        """When the first answer 200 received at or after `since` came (time.monotonic())."""
        return min(a.received for a in self.attempts if a.status == 200 and a.received >= since)

    def summary(self) -> str:
        return (f"{len(self.bookings)} events, {len(self.attempts)} attempts, {len(self.acknowledged)} acknowledged, "
                f"answers {dict(sorted(self.statuses.items()))}, transport errors {dict(self.errors)}")


def make_load(db: Database, count: int) -> Load:
    """count bookings awaiting payment (made as the application login) and the event that
    pays each."""
    with connect(db.app_url) as conn:
        ids = make_bookings(conn, count)
    tag = uuid.uuid4().hex[:8]
    return Load({b: payment_event(f"{tag}_{i}", b) for i, b in enumerate(ids)})


class Sender:
    """Delivers a Load's events to `base` from `threads` threads, each with its own
    keep-alive connection. With resend=True a delivery not answered 200 goes back in
    the queue and is sent again `resend_pause_s` later, until it is answered 200 or
    `deadline_s` has passed; with resend=False each event is sent once.
    `base` may be changed while it runs (a shim started elsewhere)."""

    def __init__(self, load: Load, base: str, secret: str, *, threads: int = 16, resend: bool = True,
                 resend_pause_s: float = 0.2, timeout_s: float = 30, deadline_s: float = 90,
                 events: list[dict] | None = None):
        self.load, self.base, self.secret = load, base, secret
        self.resend, self.resend_pause_s, self.timeout_s = resend, resend_pause_s, timeout_s
        self.deadline = time.monotonic() + deadline_s
        self._queue: queue.Queue = queue.Queue()
        todo = load.pending() if events is None else events
        self._left = len(todo)
        for evt in todo:
            self._queue.put((0.0, evt))
        self._lock = threading.Lock()
        self._done = threading.Event()
        if not todo:
            self._done.set()
        self._stop = threading.Event()
        self.in_flight = 0  # requests sent and not answered yet
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                try:
                    not_before, evt = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                pause = not_before - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                body = encode(evt)
                sent = time.monotonic()
                error = ""
                with self._lock:
                    self.in_flight += 1
                try:
                    status = client.post(self.base + "/webhooks/stripe", content=body,
                                         headers={"Stripe-Signature": sign(body, self.secret)}).status_code
                except httpx.TransportError as exc:
                    status, error = 0, type(exc).__name__
                with self._lock:
                    self.in_flight -= 1
                    self.load.attempts.append(Attempt(evt["id"], sent, time.monotonic(), status, error))
                    if status == 200:
                        self.load.acknowledged.add(evt["id"])
                    finished = status == 200 or not self.resend
                    if finished:
                        self._left -= 1
                        if self._left == 0:
                            self._done.set()
                if not finished:
                    self._queue.put((time.monotonic() + self.resend_pause_s, evt))

    def acknowledged_at_least(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.load.acknowledged) >= count or self._done.is_set():
                return len(self.load.acknowledged) >= count
            time.sleep(0.01)
        return False

    def join(self, timeout: float) -> bool:
        """Waits until every delivery is finished; stops the threads; whether all were."""
        finished = self._done.wait(timeout)
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 5)
        return finished


@dataclass
class Findings:
    """What check() found; every list must be empty."""

    lost: list[str]  # answered 200, not in stripe.events
    not_applied_once: list[tuple]  # answered 200, (event id, status, history rows for it) unless processed with one
    bookings_wrong: list[tuple]  # (booking id, status, confirmations, ledger charges) unless confirmed, 1, 1
    stray_events: int  # stored events that are none of the load's
    imbalances: list
    oversold: list
    broken: list

    def problems(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v}


def check(db: Database, load: Load, *, all_delivered: bool = True) -> Findings:
    """Reads the database (as superuser): every event answered 200 is stored and applied
    once (one booking_history row carries its id); with all_delivered, every booking is
    confirmed once with exactly one ledger charge; the ledger balances, nothing is
    oversold and no row breaks a rule (ops.broken_rows)."""
    events = load.events
    with connect(db.url) as conn:
        stored = dict(conn.execute(
            "SELECT e.event_id, e.status::text FROM stripe.events AS e WHERE e.event_id = ANY(%s)",
            [list(events)]).fetchall())
        history = dict(conn.execute(
            "SELECT h.stripe_event_id, count(*) FROM booking.booking_history AS h "
            "WHERE h.stripe_event_id = ANY(%s) GROUP BY h.stripe_event_id", [list(events)]).fetchall())
        per_booking = {str(b): (s, c, l) for b, s, c, l in conn.execute(
            """
            SELECT b.booking_id, b.status,
                   (SELECT count(*) FROM booking.booking_history AS h
                    WHERE h.booking_id = b.booking_id AND h.to_status = 'confirmed'),
                   (SELECT count(*) FROM ledger.transactions AS t
                    WHERE t.booking_id = b.booking_id AND t.kind = 'charge')
            FROM booking.bookings AS b WHERE b.booking_id = ANY(%s::uuid[])
            """, [list(load.bookings)]).fetchall()}
        stray = conn.execute("SELECT count(*) FROM stripe.events AS e WHERE NOT e.event_id = ANY(%s)",
                             [list(events)]).fetchone()[0]
        imbalances = conn.execute("SELECT * FROM ops.ledger_imbalances").fetchall()
        oversold = conn.execute("SELECT * FROM ops.oversold_inventory").fetchall()
        broken = conn.execute("SELECT * FROM ops.broken_rows").fetchall()
    lost = sorted(e for e in load.acknowledged if e not in stored)
    not_once = sorted((e, stored[e], history.get(e, 0)) for e in load.acknowledged
                      if e in stored and (stored[e] != "processed" or history.get(e, 0) != 1))
    wrong = []
    for booking_id, evt in load.bookings.items():
        status, confirmations, charges = per_booking.get(booking_id, (None, 0, 0))
        if all_delivered or evt["id"] in load.acknowledged:
            if (status, confirmations, charges) != ("confirmed", 1, 1):
                wrong.append((booking_id, status, confirmations, charges))
        elif confirmations > 1 or charges > 1:
            wrong.append((booking_id, status, confirmations, charges))
    return Findings(lost, not_once, wrong, stray, imbalances, oversold, broken)
