"""Failover under load: Patroni formation (a primary, a synchronous standby, a second
standby, each node on its own port), one shim process on the multi-host URL, chaos
deliveries from many connections, the primary's postmaster killed with SIGKILL halfway.
Every webhook ever answered 200 is on the new primary and applied once, every booking
ends as Stripe says with its money booked once, the ledger balances, the same shim process
answers 200 again, and pg_cron runs the booking jobs on the promoted node (another port
than the one stored in cron.job)."""

from __future__ import annotations

import psycopg
import pytest

from tests import failover
from tests.ha import formation


@pytest.mark.slow
def test_failover_under_load_loses_nothing_acknowledged(tmp_path):
    with formation() as f:
        old_primary = f.primary_port()
        with psycopg.connect(f.node_url(old_primary), autocommit=True) as conn:
            # The jobs were scheduled on the old primary: cron.job names its port.
            assert {p for (p,) in conn.execute("SELECT DISTINCT nodeport FROM cron.job")} == {old_primary}
        result = failover.run(f, deliveries_target=1500, seed=20261201, log=tmp_path / "shim.log")
        print(f"\nfailover: {result.summary()}")
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
