"""A failover under load, shared by tests/e2e/test_failover.py and tests/bench/failover_bench.py.

Chaos deliveries (tests/chaos.py: 30% duplicates, 20% reordered, 5% concurrent copies) go
through one shim process whose DATABASE_URL names the three nodes with
target_session_attrs=read-write. Each delivery is retried, as Stripe retries, until it is
answered 200. When a share of them has been answered, the primary's postmaster is killed
with SIGKILL and Patroni promotes the synchronous standby. Afterwards the new primary is
read: every event ever answered 200 must be there and applied once.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import psycopg

from tests.chaos import (
    broken_invariants, deliveries as chaos_deliveries, drain_retries, expected_ledger_transactions, make_bookings,
    send_group, wrong_bookings,
)
from tests.ha import Formation, Kill, create_login
from tests.load import Attempt, seconds_unavailable
from tests.pg import connect
from tests.shim.server import shim_process
from tests.stripe_events import encode, sign

SECRET = "whsec_failover_0123456789abcdef"
SHIM_LOGIN = "ha_shim"
APP_LOGIN = "ha_app"  # makes the bookings, as an application server would
DELIVERY_DEADLINE_S = 180  # a delivery not answered 200 by then counts as not acknowledged
RETRY_PAUSE_S = 0.2  # Stripe waits longer (minutes to hours); the test only needs "later"


@dataclass
class Result:
    bookings: dict
    deliveries: int  # deliveries planned (a concurrent copy counts as one more)
    acknowledged: int = 0  # deliveries answered 200
    acknowledged_events: set[str] = field(default_factory=set)
    answers: list[Attempt] = field(default_factory=list)
    kill: Kill | None = None
    new_primary: int | None = None
    promoted_wall: float | None = None  # time.time() when the new primary accepted writes
    promoted_at: float | None = None  # the same, time.monotonic()
    timeline: list[str] = field(default_factory=list)  # the failover in Patroni's logs
    shim_pid: int | None = None
    shim_alive_after: bool = False
    # Filled by check():
    lost: list[str] = field(default_factory=list)
    applied_twice: int = 0
    wrong: list = field(default_factory=list)
    broken: dict = field(default_factory=dict)
    not_applied: list = field(default_factory=list)
    ledger_transactions: int = 0
    expected_ledger_transactions: int = 0

    @property
    def statuses(self) -> Counter:
        return Counter(a.status for a in self.answers)

    @property
    def seconds_to_first_write(self) -> float | None:
        """From the kill to the first 200 answer of a request sent after it."""
        after = [a.received for a in self.answers if a.status == 200 and a.sent > self.kill.at]
        return min(after) - self.kill.at if after else None

    @property
    def seconds_refused(self) -> float | None:
        """From the first answer that was not 200 after the kill to the first 200 after that."""
        return seconds_unavailable(self.answers, self.kill.at)

    @property
    def seconds_to_promotion(self) -> float:
        """From the kill to the new primary out of recovery (as read by polling it)."""
        return self.promoted_at - self.kill.at

    def summary(self) -> str:
        return (f"deliveries {self.deliveries:,}, acknowledged {self.acknowledged:,}, lost {len(self.lost)}, "
                f"applied twice {self.applied_twice}, seconds without a primary "
                f"{self.seconds_to_first_write:.2f} (kill to first acknowledged write; refused or failed answers "
                f"for {self.seconds_refused:.2f} s; promoted after {self.seconds_to_promotion:.2f} s), answers {dict(sorted(self.statuses.items()))}, "
                f"primary 127.0.0.1:{self.kill.port} killed, 127.0.0.1:{self.new_primary} promoted")


def run(f: Formation, *, deliveries_target: int, seed: int, kill_after: float = 0.4, workers: int = 8,
        log=None) -> Result:
    """Makes bookings, sends their chaos deliveries through a shim, kills the primary when
    kill_after of the deliveries are acknowledged, and waits for every delivery to be answered."""
    rng = random.Random(seed)
    with connect(f.url()) as admin:
        create_login(admin, SHIM_LOGIN, "shim")
        create_login(admin, APP_LOGIN, "app")
        with connect(f.url(user=APP_LOGIN)) as app:
            bookings = make_bookings(app, admin, rng, deliveries_target)
    plan = chaos_deliveries(bookings, rng)
    result = Result(bookings=bookings, deliveries=sum(len(g) for g in plan))
    lock = threading.Lock()
    enough = threading.Event()
    local = threading.local()
    # Two transactions of events at a time (group commit), as in the chaos test.
    with shim_process(f.url(user=SHIM_LOGIN), SECRET, extra_env={"WEBHOOK_BATCH_CONCURRENCY": "2"},
                      log=log) as (base, proc):
        result.shim_pid = proc.pid

        def deliver(evt):
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = httpx.Client(timeout=30)
            body = encode(evt)
            deadline = time.monotonic() + DELIVERY_DEADLINE_S
            while time.monotonic() < deadline:
                sent = time.monotonic()
                error = ""
                try:
                    status = client.post(base + "/webhooks/stripe", content=body,
                                         headers={"Stripe-Signature": sign(body, SECRET)}).status_code
                except httpx.TransportError as exc:
                    status, error = 0, type(exc).__name__
                with lock:
                    result.answers.append(Attempt(evt["id"], sent, time.monotonic(), status, error))
                    if status == 200:
                        result.acknowledged += 1
                        result.acknowledged_events.add(evt["id"])
                        if result.acknowledged >= kill_after * result.deliveries:
                            enough.set()
                if status == 200:
                    return
                time.sleep(RETRY_PAUSE_S)

        def deliver_group(group):
            send_group(deliver, group)

        def kill_primary():
            if not enough.wait(timeout=DELIVERY_DEADLINE_S):
                return
            result.kill = f.kill_primary()
            result.new_primary = f.wait_for_new_primary(result.kill.port)
            result.promoted_wall, result.promoted_at = time.time(), time.monotonic()

        killer = threading.Thread(target=kill_primary)
        killer.start()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(deliver_group, plan))
        enough.set()
        killer.join(timeout=90)
        if result.kill:
            kill_utc = time.strftime("%H:%M:%S", time.gmtime(result.kill.wall))
            result.timeline = [f"{kill_utc} killed the postmaster of 127.0.0.1:{result.kill.port}",
                               *f.failover_timeline(kill_utc)][:20]
        result.shim_alive_after = proc.poll() is None
    return result


def check(f: Formation, result: Result) -> None:
    """Reads the new primary: fills lost, applied_twice, wrong, broken, not_applied."""
    with connect(f.url()) as admin:
        drain_retries(admin)
        stored = {e for (e,) in admin.execute("SELECT event_id FROM stripe.events WHERE event_id = ANY(%s)",
                                               [list(result.acknowledged_events)]).fetchall()}
        result.lost = sorted(result.acknowledged_events - stored)
        result.not_applied = admin.execute(
            "SELECT status, count(*) FROM stripe.events WHERE status NOT IN ('processed', 'ignored') GROUP BY 1").fetchall()
        result.ledger_transactions = admin.execute("SELECT count(*) FROM ledger.transactions").fetchone()[0]
        result.expected_ledger_transactions = expected_ledger_transactions(result.bookings)
        # A Stripe object booked more than once, or a booking charged more than once.
        twice_objects = admin.execute(
            "SELECT count(*) FROM (SELECT FROM ledger.transactions GROUP BY kind, stripe_object_id "
            "HAVING count(*) > 1) AS t").fetchone()[0]
        twice_charged = admin.execute(
            "SELECT count(*) FROM (SELECT FROM ledger.transactions WHERE kind = 'charge' GROUP BY booking_id "
            "HAVING count(*) > 1) AS t").fetchone()[0]
        result.applied_twice = twice_objects + twice_charged + max(
            0, result.ledger_transactions - result.expected_ledger_transactions)
        result.wrong = wrong_bookings(admin, result.bookings)
        result.broken = broken_invariants(admin)


def cron_ran_on(f: Formation, port: int, after_wall: float, timeout_s: float = 80) -> tuple[list, list]:
    """Waits until pg_cron ran a booking job on the node at port after after_wall (pg_cron
    starts jobs on the minute); returns (core.cron_runs rows finished since, failed
    cron.job_run_details rows since)."""
    deadline = time.monotonic() + timeout_s
    runs, failed = [], []
    with psycopg.connect(f.node_url(port), autocommit=True) as conn:
        while time.monotonic() < deadline:
            runs = conn.execute(
                "SELECT jobname, last_status, last_finished_at FROM core.cron_runs "
                "WHERE last_finished_at > to_timestamp(%s) AND last_status = 'ok' ORDER BY jobname",
                [after_wall]).fetchall()
            failed = conn.execute(
                "SELECT jobid, status, return_message FROM cron.job_run_details "
                "WHERE start_time > to_timestamp(%s) AND status = 'failed'", [after_wall]).fetchall()
            if runs:
                break
            time.sleep(1)
    return runs, failed
