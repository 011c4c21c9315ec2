"""The worker's stop path and its database retries, against a real SMTP server (aiosmtpd)
on 127.0.0.1: SIGTERM with every slot stuck on a stalled mail server, and a database that
goes away mid-run."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter

import pytest
from aiosmtpd.controller import Controller

from tests.pg import LOGINS, connect, migrate, start_cluster, url_for, wait_until
from tests.shim.server import free_port
from tests.e2e.test_worker import smtp_server
from tests.e2e.workers import start_worker, stop
from tests.sql.helpers import new_inventory, place

MESSAGE_ID = re.compile(r"^Message-ID:\s*(<booking-[0-9a-f-]+-confirmed@booking-core>)", re.MULTILINE)  # may be folded


class StallingInbox:
    """Records every message it receives. While `stall` is set, it records the message and
    then does not answer the end of DATA until `release` is set: the client has sent the
    mail but never learns it was accepted (the case that makes a duplicate)."""

    def __init__(self, delay_s: float = 0.0):
        self.messages: list[str] = []
        self.stall = threading.Event()
        self.release = threading.Event()
        self.delay_s = delay_s
        self.stalled = 0

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.content.decode("utf-8", "replace"))
        if self.stall.is_set():
            self.stalled += 1
            while not self.release.is_set():
                await asyncio.sleep(0.05)
        elif self.delay_s:
            await asyncio.sleep(self.delay_s)
        return "250 OK"

    def message_ids(self) -> Counter:
        return Counter(m.group(1) for m in (MESSAGE_ID.search(text) for text in self.messages) if m)


@pytest.fixture
def stalling_inbox():
    with smtp_server(StallingInbox()) as box:
        yield box


def confirmed_bookings(app_url: str, superuser_url: str, n: int) -> list[str]:
    """n confirmed bookings, each with its queued email.booking_confirmed job."""
    ids = []
    with connect(app_url) as conn:
        inventory = new_inventory(conn, n)
        for i in range(n):
            hold, _ = place(conn, inventory, 1, holder=f"guest{i}@example.com")
            ids.append(conn.execute("SELECT api.create_booking(%s, %s, ARRAY[%s::uuid])",
                                    (uuid.uuid4().hex, f"guest{i}@example.com", hold)).fetchone()[0]["booking_id"])
    with connect(superuser_url) as conn:
        for booking_id in ids:
            conn.execute("SELECT booking.apply_event(%s, 'payment_succeeded')", (booking_id,))
    return ids


def log_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def message_id(booking_id: str) -> str:
    return f"<booking-{booking_id}-confirmed@booking-core>"


def test_sigterm_with_every_slot_stuck_on_a_stalled_mail_server(db, stalling_inbox):
    grace_s, slots = 2, 4
    bookings = confirmed_bookings(db.app_url, db.url, 12)
    stalling_inbox.stall.set()
    first = start_worker(db.worker_url, stalling_inbox.url, WORKER_GRACE_S=str(grace_s),
                         WORKER_CONCURRENCY=str(slots))
    second = None
    try:
        assert wait_until(lambda: stalling_inbox.stalled == slots, 30), "the worker never filled its slots"
        running = {str(r[0]): r[1] for r in db.rows(
            "SELECT job_id, payload->>'booking_id' FROM jobs.jobs WHERE status = 'running'")}
        assert len(running) == slots
        signalled_at = time.monotonic()
        first.send_signal(signal.SIGTERM)
        try:
            out, _ = first.communicate(timeout=grace_s + 5)
        except subprocess.TimeoutExpired:
            first.kill()
            out, _ = first.communicate()
            pytest.fail(f"the worker still ran {grace_s + 5} s after SIGTERM:\n{out[-3000:]}")
        exited_after_s = time.monotonic() - signalled_at
        print(f"\nworker exited {exited_after_s:.2f} s after SIGTERM (grace {grace_s} s)")
        assert first.returncode == 0
        assert exited_after_s <= grace_s + 5
        # It waited out the grace before giving the jobs back.
        assert exited_after_s >= grace_s - 0.2
        lines = log_lines(out)
        given_back = {line["job_id"] for line in lines if line["message"].startswith("job given back")}
        assert given_back == set(running), out[-3000:]
        # No claim after the signal: the other jobs were never touched.
        assert db.one("SELECT count(*) FROM jobs.jobs WHERE status = 'queued' AND attempts = 0") == 12 - slots
        assert db.one("SELECT count(*) FROM jobs.jobs WHERE status = 'running'") == 0
        assert db.one("SELECT count(*) FROM jobs.jobs WHERE status = 'failed' AND last_error = 'worker stopped'") \
            == slots

        # A second worker, the mail server answering again, does every job; the given-back
        # ones once their retry delay (about 10 s) has passed.
        stalling_inbox.stall.clear()
        stalling_inbox.release.set()
        second = start_worker(db.worker_url, stalling_inbox.url, WORKER_CONCURRENCY=str(slots))
        assert wait_until(lambda: db.one("SELECT count(*) FROM jobs.jobs WHERE status = 'done'") == 12, 45), \
            db.rows("SELECT status, attempts, run_at - now() FROM jobs.jobs")
        delivered = stalling_inbox.message_ids()
        assert all(delivered[message_id(b)] >= 1 for b in bookings)  # each at least once
        duplicates = {mid: n for mid, n in delivered.items() if n > 1}
        print(f"delivered {sum(delivered.values())} messages for {len(bookings)} bookings; "
              f"duplicates (same Message-ID): {duplicates}")
        # The only copies are those the stalled server had received but never acknowledged.
        assert set(duplicates) == {message_id(b) for b in running.values()}
        assert all(n == 2 for n in duplicates.values())
    finally:
        stop(first)
        if second is not None:
            stop(second)


@pytest.mark.slow
def test_the_worker_survives_the_database_going_away_and_finishes_its_jobs(tmp_path):
    """A cluster of its own, stopped with SIGQUIT (immediate shutdown: connections cut, no
    checkpoint) and restarted a few seconds later on the same port: while jobs are in flight
    (their completions fail), while the worker polls (its claims fail), and during a stop
    (giving back fails)."""
    box = StallingInbox(delay_s=1.0)
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    box.url = f"smtp://127.0.0.1:{controller.port}"
    pg = start_cluster()
    worker = None
    try:
        base = pg.url()
        migrate(base)
        with connect(url_for(base, "postgres")) as conn:
            for login, role in LOGINS.items():
                conn.execute(f"CREATE ROLE {login} LOGIN")
                conn.execute(f"GRANT {role} TO {login}")
        superuser = base
        bookings = confirmed_bookings(url_for(base, "test", "app_login"), superuser, 12)
        worker = start_worker(url_for(base, "test", "worker_login"), box.url, WORKER_CONCURRENCY="4",
                              WORKER_GRACE_S="2")
        # Mid-run: some mail sent, some jobs running.
        assert wait_until(lambda: len(box.messages) >= 2, 30)
        pg.terminate(signal.SIGQUIT)
        down_at = time.monotonic()
        time.sleep(4)  # jobs finish meanwhile; their completions and the claims fail
        assert worker.poll() is None, "the worker died with the database"
        pg.start()
        print(f"\ndatabase down for {time.monotonic() - down_at:.1f} s")

        def done(n: int):
            def check() -> bool:
                with connect(superuser) as conn:
                    return conn.execute("SELECT count(*) FROM jobs.jobs WHERE status = 'done'").fetchone()[0] == n
            return check

        assert wait_until(done(12), 60), "the worker did not finish its jobs after the database came back"
        assert worker.poll() is None

        # Down again while the worker only polls an empty queue: its claims fail meanwhile.
        pg.terminate(signal.SIGQUIT)
        time.sleep(3)
        assert worker.poll() is None, "the worker died on a failed claim"
        pg.start()
        bookings += confirmed_bookings(url_for(base, "test", "app_login"), superuser, 4)
        assert wait_until(done(16), 60), "the worker claimed nothing after the database came back"
        out = stop(worker)
        assert worker.returncode == 0
        messages = [line["message"] for line in log_lines(out)]
        retried = Counter(m for m in messages if m.endswith("failed; retrying"))
        print(f"retries logged: {dict(retried)}")
        assert retried["recording completed jobs failed; retrying"] >= 1, out[-3000:]
        assert retried["claiming jobs failed; retrying"] >= 1, out[-3000:]
        delivered = box.message_ids()
        assert all(delivered[message_id(b)] >= 1 for b in bookings)
        print(f"delivered {sum(delivered.values())} messages for {len(bookings)} bookings; duplicates: "
              f"{ {mid: n for mid, n in delivered.items() if n > 1} }")

        # A stop while the database is down: giving back fails, is logged, and the process
        # still ends within the grace plus a few seconds; the lease hands the jobs over.
        box.stall.set()
        stuck = confirmed_bookings(url_for(base, "test", "app_login"), superuser, 2)
        worker = start_worker(url_for(base, "test", "worker_login"), box.url, WORKER_GRACE_S="2",
                              WORKER_LEASE_S="5")
        assert wait_until(lambda: box.stalled == 2, 30)
        pg.terminate(signal.SIGQUIT)
        signalled_at = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        out = stop(worker, timeout=2 + 5)
        exited_after_s = time.monotonic() - signalled_at
        print(f"with the database down, the worker exited {exited_after_s:.2f} s after SIGTERM")
        assert worker.returncode == 0, out[-3000:]
        not_given_back = [line for line in log_lines(out) if line["message"].startswith("job not given back")]
        assert len(not_given_back) == 2, out[-3000:]
        pg.start()
        box.stall.clear()
        box.release.set()
        worker = start_worker(url_for(base, "test", "worker_login"), box.url)
        assert wait_until(done(18), 60), "the jobs of the stopped worker were not taken over after their lease"
        assert all(box.message_ids()[message_id(b)] >= 1 for b in stuck)
        out = stop(worker)
        assert worker.returncode == 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.communicate()
        pg.stop()
        controller.stop()
