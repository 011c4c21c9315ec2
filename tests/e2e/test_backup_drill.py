"""A small backup drill: dump the pg_cron database, restore it into a fresh cluster, check it."""

from __future__ import annotations

import importlib.util

from tests.pg import ROOT

spec = importlib.util.spec_from_file_location("backup_drill", ROOT / "scripts" / "backup_drill.py")
backup_drill = importlib.util.module_from_spec(spec)
spec.loader.exec_module(backup_drill)


def test_a_populated_database_restores_with_its_invariants_counts_and_cron_jobs(cron_db, tmp_path):
    backup_drill.populate(cron_db.url)
    result = backup_drill.drill(cron_db.url, tmp_path)
    assert result["before"]["booking.bookings"] >= 5 and result["before"]["ledger.transactions"] >= 3
    assert len(result["checks"]) >= 6 and all(result["checks"].values()), result["checks"]
    assert len(result["after"]["cron jobs"]) >= 5
