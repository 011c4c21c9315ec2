"""python -m pyshim worker against a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
from aiosmtpd.controller import Controller

from tests.pg import ROOT, connect, env_with, wait_until
from tests.e2e.workers import start_worker
from tests.shim.receiver import post_receiver
from tests.shim.server import free_port
from tests.sql.helpers import new_inventory, place


class Inbox:
    """Records every message; can hold the first connection's EHLO to stall a client."""

    def __init__(self):
        self.messages = []
        self.stall_first = threading.Event()
        self.stalled = threading.Event()
        self.release = threading.Event()
        self._connections = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self._connections += 1
        if self.stall_first.is_set() and self._connections == 1:
            self.stalled.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, envelope.content.decode("utf-8", "replace")))
        return "250 OK"


@contextmanager
def smtp_server(box):
    """A real aiosmtpd server on 127.0.0.1 delivering to `box` (its url set), stopped after."""
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    box.url = f"smtp://127.0.0.1:{controller.port}"
    try:
        yield box
    finally:
        box.release.set()
        controller.stop()


@pytest.fixture
def inbox():
    with smtp_server(Inbox()) as box:
        yield box


def confirmed_booking(db) -> str:
    with connect(db.app_url) as conn:
        inventory = new_inventory(conn, 10)
        hold, _ = place(conn, inventory, 2, holder="alice@example.com")
        booking_id = conn.execute("SELECT api.create_booking('k', 'alice@example.com', ARRAY[%s::uuid])",
                                  (hold,)).fetchone()[0]["booking_id"]
    with connect(db.url) as conn:
        with conn.transaction():
            conn.execute("SELECT set_config('app.correlation_id', 'req-worker-1', true)")
            conn.execute("SELECT booking.apply_event(%s, 'payment_succeeded')", (booking_id,))
    return booking_id


def test_the_confirmation_email_is_sent_once_and_sigterm_stops_cleanly(db, inbox):
    booking_id = confirmed_booking(db)
    proc = start_worker(db.worker_url, inbox.url)
    try:
        assert wait_until(lambda: db.one("SELECT status FROM jobs.jobs") == "done")
        assert len(inbox.messages) == 1
        rcpts, content = inbox.messages[0]
        assert rcpts == ["alice@example.com"] and booking_id in content
        assert f"<booking-{booking_id}-confirmed@booking-core>" in content
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert '"message": "worker stopped"' in out
    assert '"correlation_id": "req-worker-1"' in out  # logs carry the cause's correlation id


def test_a_worker_killed_mid_job_is_taken_over_after_its_lease_and_the_job_done_once(db, inbox):
    confirmed_booking(db)
    inbox.stall_first.set()
    first = start_worker(db.worker_url, inbox.url, WORKER_LEASE_S="2")
    try:
        assert inbox.stalled.wait(20), "the first worker never reached the SMTP server"
        assert db.one("SELECT status FROM jobs.jobs") == "running"
        first.send_signal(signal.SIGKILL)  # mid-job: connected, not yet sent
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    inbox.release.set()
    second = start_worker(db.worker_url, inbox.url, WORKER_LEASE_S="2")
    try:
        assert wait_until(lambda: db.one("SELECT status FROM jobs.jobs") == "done", 30)
        time.sleep(0.5)
        assert len(inbox.messages) == 1
        assert db.one("SELECT attempts FROM jobs.jobs") == 2
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)


def test_the_worker_refuses_to_start_without_its_settings():
    proc = subprocess.run([sys.executable, "-m", "pyshim", "worker"], cwd=ROOT, env=env_with(),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "DATABASE_URL is required" in proc.stdout


def test_a_critical_error_reaches_the_alert_webhook_within_a_minute(db):
    with post_receiver() as (port, posts):
        proc = start_worker(db.worker_url, WORKER_POLL_S="1", ALERT_WEBHOOK_URL=f"http://127.0.0.1:{port}/hooks/alert")
        try:
            with connect(db.app_url) as conn:
                with conn.transaction():
                    conn.execute("SELECT set_config('app.correlation_id', 'req-alert-9', true)")
                    conn.execute("SELECT api.log_error('critical', 'ledger', 'ledger imbalance in txn 42')")
                logged_at = time.monotonic()
            assert wait_until(lambda: posts, 60), "no alert within 60 s"
            payload = json.loads(posts[0].body)
            assert posts[0].at - logged_at < 60
            assert payload["correlation_id"] == "req-alert-9" and "ledger imbalance" in payload["text"]
            assert "req-alert-9" in payload["text"]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)


def test_a_waitlist_offer_is_mailed_from_its_payload(db, inbox):
    with connect(db.app_url) as conn:
        inventory = new_inventory(conn, 2)
        entry = conn.execute("SELECT api.join_waitlist(%s, 2, 'fan@example.com')", (inventory,)).fetchone()[0]
        hold = conn.execute("SELECT hold_id FROM api.waitlist_status(%s)", (entry,)).fetchone()[0]
    proc = start_worker(db.worker_url, inbox.url)
    try:
        assert wait_until(lambda: db.one("SELECT status FROM jobs.jobs WHERE kind = 'email.waitlist_offer'") == "done")
        rcpts, content = inbox.messages[0]
        assert rcpts == ["fan@example.com"] and str(hold) in content
        assert f"<waitlist-{entry}-offer@booking-core>" in content
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
