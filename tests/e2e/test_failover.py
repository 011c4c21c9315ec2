"""Failover under load: Patroni formation (a primary, a synchronous standby, a second
standby, each node on its own port), one shim process on the multi-host URL, chaos
deliveries from many connections, the primary's postmaster killed with SIGKILL halfway.
Every webhook ever answered 200 is on the new primary and applied once, every booking
ends as Stripe says with its money booked once, the ledger balances, the same shim process
answers 200 again, and pg_cron runs the booking jobs on the promoted node (another port
than the one stored in cron.job)."""

from __future__ import annotations

import signal
import subprocess
import uuid

import psycopg
import pytest
from aiosmtpd.controller import Controller

from tests import failover
from tests.e2e.test_worker import Inbox
from tests.e2e.workers import start_worker
from tests.ha import create_login, formation
from tests.pg import connect, one, wait_until
from tests.shim.server import free_port
from tests.sql.helpers import new_inventory, place


@pytest.mark.slow
def test_failover_under_load_loses_nothing_acknowledged(tmp_path):
    with formation() as f:
        old_primary = f.primary_port()
        with psycopg.connect(f.node_url(old_primary), autocommit=True) as conn:
            # The jobs were scheduled on the old primary: cron.job names its port.
            assert {p for (p,) in conn.execute("SELECT DISTINCT nodeport FROM cron.job")} == {old_primary}
        result = failover.run(f, deliveries_target=1500, seed=20261201, log=tmp_path / "shim.log")
        print(f"\nfailover: {result.summary()}")
        print("\n".join(result.timeline))
        assert result.kill is not None and result.new_primary not in (None, old_primary)
        assert result.shim_alive_after, "the shim process died"
        # Every delivery was answered 200 in the end (Stripe would have retried the others),
        # some of them after the kill, by the same process.
        assert result.acknowledged == result.deliveries, result.statuses
        assert any(a.status == 200 and a.sent > result.kill.at for a in result.answers)
        # While there was no primary the shim answered 503 (or the request failed): never
        # 400 or 500, which Stripe would not have retried the same way.
        assert set(result.statuses) <= {200, 503, 0}, result.statuses
        assert result.seconds_to_first_write is not None

        failover.check(f, result)
        assert result.lost == []
        assert result.applied_twice == 0
        assert result.not_applied == []
        assert result.wrong == []
        assert result.ledger_transactions == result.expected_ledger_transactions
        assert result.broken == {}

        # pg_cron: the scheduler of the promoted node runs the jobs, in background workers,
        # although cron.job still names the old primary's port.
        runs, failed = failover.cron_ran_on(f, result.new_primary, result.promoted_wall)
        assert runs, "no booking cron job finished on the new primary after the promotion"
        assert failed == []
        with psycopg.connect(f.node_url(result.new_primary), autocommit=True) as conn:
            assert {p for (p,) in conn.execute("SELECT DISTINCT nodeport FROM cron.job")} == {old_primary}
        # The old primary came back as a standby: the formation is whole again.
        f.wait_for_sync_standby()
        print(f"cron on the new primary: {runs}; formation: "
              f"{[(m['port'], m['role'], m['state']) for m in f.members()]}")


def confirmed_booking(url: str) -> None:
    """A booking paid for, which enqueues its confirmation e-mail (as test_worker's, with a
    key of its own)."""
    with connect(url) as conn:
        inventory = new_inventory(conn, 10)
        hold, _ = place(conn, inventory, 1, holder="alice@example.com")
        booking_id = conn.execute("SELECT api.create_booking(%s, 'alice@example.com', ARRAY[%s::uuid])",
                                  (uuid.uuid4().hex, hold)).fetchone()[0]["booking_id"]
        conn.execute("SELECT booking.apply_event(%s, 'payment_succeeded')", (booking_id,))


@pytest.mark.slow
def test_the_worker_follows_the_primary_without_a_restart():
    """A job enqueued after the failover is done by the same worker process, which was
    started on the multi-host URL before it."""
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    inbox.url = f"smtp://127.0.0.1:{controller.port}"
    try:
        with formation() as f:
            with connect(f.url()) as admin:
                create_login(admin, "ha_worker", "worker")
            worker = start_worker(f.url(user="ha_worker"), inbox.url)
            try:
                confirmed_booking(f.url())
                assert wait_until(lambda: len(inbox.messages) == 1, 30)
                killed = f.kill_primary()
                f.wait_for_new_primary(killed.port)
                confirmed_booking(f.url())
                assert wait_until(lambda: len(inbox.messages) == 2 or worker.poll() is not None, 60)
                assert worker.poll() is None, "the worker exited during the failover"
                assert len(inbox.messages) == 2
                assert one(f.url(), "SELECT count(*) FROM jobs.jobs WHERE status = 'done'") == 2
            finally:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
                try:
                    out, _ = worker.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    out, _ = worker.communicate()
                print(out[-3000:])
    finally:
        controller.stop()
