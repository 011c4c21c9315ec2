"""The migrator: run once, checksummed, repeatables re-applied on change, locked, dry run,
and a fresh build equal to the committed snapshot."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading

import pytest

from tests.pg import ROOT, SQL, migrate


def applied_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("applying ")]


def all_sql_files() -> list[str]:
    files = [p.relative_to(SQL).as_posix() for p in sorted((SQL / "migrations").glob("V*.sql"))]
    # Each schema's functions, bottom layer first (docs/DESIGN.md, "Layers"), then any other.
    layers = ["jobs", "core", "ledger", "booking", "stripe", "api", "ops"]
    functions = [p.relative_to(SQL / "functions") for p in (SQL / "functions").glob("**/*.sql")]
    assert {p.parts[0].removesuffix(".sql") for p in functions} <= set(layers), "a schema missing from the layers"
    functions.sort(key=lambda p: (layers.index(p.parts[0].removesuffix(".sql")), p.as_posix()))
    files += [f"functions/{p.as_posix()}" for p in functions]
    files += [p.relative_to(SQL).as_posix() for p in sorted((SQL / "views").glob("*.sql"))]
    return files + ["grants.sql", "cron/schedules.sql"]


def test_fresh_database_gets_every_file_once_and_a_rerun_changes_nothing(blank_db):
    first = migrate(blank_db.url)
    assert [line.split()[-1] for line in applied_lines(first.stdout)] == all_sql_files()
    before = blank_db.rows("SELECT kind, name, checksum, applied_at FROM migrate.history ORDER BY 1, 2")

    second = migrate(blank_db.url)
    assert applied_lines(second.stdout) == []
    assert "nothing to apply: the database is up to date" in second.stdout
    after = blank_db.rows("SELECT kind, name, checksum, applied_at FROM migrate.history ORDER BY 1, 2")
    assert after == before


def test_dry_run_prints_the_plan_and_writes_nothing(blank_db):
    out = migrate(blank_db.url, "--dry-run")
    planned = [line.split()[-1] for line in out.stdout.splitlines() if line.startswith("would apply ")]
    assert planned == all_sql_files()
    assert blank_db.one("SELECT to_regclass('migrate.history') IS NULL")
    assert blank_db.one("SELECT count(*) FROM pg_namespace WHERE nspname IN ('api', 'ops', 'stripe', 'migrate')") == 0


def copy_of_sql(tmp_path):
    target = tmp_path / "sql"
    shutil.copytree(SQL, target)
    return target


def test_an_applied_versioned_file_that_was_edited_is_refused(blank_db, tmp_path):
    sql_dir = copy_of_sql(tmp_path)
    migrate(blank_db.url, sql_dir=sql_dir)
    v1 = sorted((sql_dir / "migrations").glob("V*.sql"))[0]
    v1.write_text(v1.read_text() + "\nCREATE TABLE core.sneaky (id int);\n")

    out = migrate(blank_db.url, sql_dir=sql_dir, check=False)
    assert out.returncode != 0
    assert f"migration migrations/{v1.name} was edited after it was applied" in out.stderr
    assert "add a new migration" in out.stderr
    assert blank_db.one("SELECT to_regclass('core.sneaky') IS NULL")


def test_a_changed_repeatable_is_reapplied_with_grants_and_nothing_else(blank_db, tmp_path):
    sql_dir = copy_of_sql(tmp_path)
    migrate(blank_db.url, sql_dir=sql_dir)
    health = sql_dir / "functions" / "api" / "health.sql"
    health.write_text(health.read_text().replace("'{\"status\": ok|degraded", "'{\"status\" (edited): ok|degraded"))

    out = migrate(blank_db.url, sql_dir=sql_dir)
    assert [line.split()[-1] for line in applied_lines(out.stdout)] == ["functions/api/health.sql", "grants.sql"]
    assert "(edited)" in blank_db.one("SELECT obj_description('api.health()'::regprocedure)")


def test_a_new_versioned_file_runs_and_a_failing_one_leaves_nothing_behind(blank_db, tmp_path):
    sql_dir = copy_of_sql(tmp_path)
    migrate(blank_db.url, sql_dir=sql_dir)
    (sql_dir / "migrations" / "V9998__good.sql").write_text("CREATE TABLE core.good (id int);\n")
    (sql_dir / "migrations" / "V9999__bad.sql").write_text(
        "CREATE TABLE core.half_done (id int);\nSELECT 1 / 0;\n"
    )
    out = migrate(blank_db.url, sql_dir=sql_dir, check=False)
    assert out.returncode != 0
    assert "division by zero" in out.stderr
    assert blank_db.one("SELECT to_regclass('core.good') IS NOT NULL")
    assert blank_db.one("SELECT to_regclass('core.half_done') IS NULL")
    assert blank_db.one("SELECT count(*) FROM migrate.history WHERE name LIKE '%V9999%'") == 0
    assert blank_db.one("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'core.good'::regclass") == "booking_owner"


def test_after_a_versioned_file_every_repeatable_is_applied_again(blank_db, tmp_path):
    """A migration may drop views to change a column they read (V0007 does): the views,
    functions and grants all come back in the same run, though their files did not change."""
    sql_dir = copy_of_sql(tmp_path)
    migrate(blank_db.url, sql_dir=sql_dir)
    (sql_dir / "migrations" / "V9998__drops_a_view.sql").write_text("DROP VIEW ops.oversold_inventory;\n")
    out = migrate(blank_db.url, sql_dir=sql_dir)
    assert [line.split()[-1] for line in applied_lines(out.stdout)] == [
        "migrations/V9998__drops_a_view.sql", *[f for f in all_sql_files() if not f.startswith("migrations/")]]
    assert blank_db.one("SELECT to_regclass('ops.oversold_inventory') IS NOT NULL")
    assert blank_db.one("SELECT has_table_privilege('booking_ops', 'ops.oversold_inventory', 'SELECT')")
    assert applied_lines(migrate(blank_db.url, sql_dir=sql_dir).stdout) == []


def domain_values(db, domain: str) -> list[str]:
    """The values a "VALUE IN (...)" domain allows, read from its constraint."""
    definition = db.one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE contypid = %s::regtype", (domain,))
    return sorted(re.findall(r"'([^']*)'::text", definition))


@pytest.mark.parametrize("domain, catalog", [
    ("ledger.account_name", "SELECT account FROM ledger.accounts"),
    ("booking.booking_status", "SELECT status FROM booking.booking_states"),
])
def test_a_domain_that_replaced_a_foreign_key_allows_exactly_its_catalog(db, domain, catalog):
    assert domain_values(db, domain) == sorted(r[0] for r in db.rows(catalog))


def test_every_currency_of_the_catalog_is_a_currency_code(db):
    # A code the domain refuses makes the cast fail.
    assert db.one("SELECT count(code::core.currency_code) FROM core.currencies") > 100


def test_two_migrators_at_once_apply_each_file_once(blank_db):
    results: list[subprocess.CompletedProcess] = []
    barrier = threading.Barrier(2)

    def run():
        barrier.wait()
        results.append(migrate(blank_db.url, check=False))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    applied = applied_lines(results[0].stdout) + applied_lines(results[1].stdout)
    assert sorted(line.split()[-1] for line in applied) == sorted(all_sql_files())
    assert blank_db.one("SELECT count(*) FROM migrate.history") == len(all_sql_files())


def test_a_fresh_build_equals_the_committed_snapshot(cron_db):
    """`make snapshot` rewrites sql/schema.sql; a difference here means it was not run."""
    built = subprocess.run(
        [str(ROOT / "scripts" / "snapshot.sh"), cron_db.url], capture_output=True, text=True, check=True
    ).stdout
    committed = (SQL / "schema.sql").read_text()
    assert built == committed, "sql/schema.sql is stale: run `make snapshot` (or see git diff) and commit it"
