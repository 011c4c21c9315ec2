"""`make lint` can fail: plpgsql_check names a planted bad body, squawk refuses a planted unsafe
migration, and the real tree passes both."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.pg import ROOT, SQL, connect

LINT_PLPGSQL = [sys.executable, str(ROOT / "scripts" / "lint_plpgsql.py")]
SQUAWK = [str(ROOT / ".venv" / "bin" / "squawk") if (ROOT / ".venv" / "bin" / "squawk").exists()
          else shutil.which("squawk") or "squawk", "--config", str(ROOT / ".squawk.toml"), "--reporter", "gcc"]

PLANTED = r"""
CREATE FUNCTION core.lint_planted_missing_column() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RETURN (SELECT count(h.no_such_column) FROM booking.holds AS h);
END;
$$;
CREATE FUNCTION core.lint_planted_unused_variable() RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_unused int;
BEGIN
    RETURN 1;
END;
$$;
CREATE FUNCTION core.lint_planted_injection(p_table text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_count bigint;
BEGIN
    EXECUTE 'SELECT count(*) FROM ' || p_table INTO v_count;
    RETURN v_count;
END;
$$;
CREATE FUNCTION core.lint_planted_hidden_cast(p_id uuid) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_count int;
BEGIN
    SELECT count(*) INTO v_count FROM booking.holds AS h WHERE h.hold_id = p_id;
    RETURN v_count;
END;
$$;
CREATE FUNCTION core.lint_planted_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.no_such_field := 1;
    RETURN NEW;
END;
$$;
CREATE TRIGGER lint_planted BEFORE INSERT ON core.error_groups
FOR EACH ROW EXECUTE FUNCTION core.lint_planted_trigger();
CREATE FUNCTION core.lint_planted_orphan_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RETURN NEW;
END;
$$;
-- Outside the project's schemas: not ours to check.
CREATE FUNCTION public.lint_not_ours() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    RETURN (SELECT count(no_such_column) FROM booking.holds);
END;
$$;
"""


def run_lint_plpgsql(url: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LINT_PLPGSQL, url], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_plpgsql_check_passes_on_every_function_of_the_tree(cron_db):
    """The pg_cron database, as make lint checks it (the cron functions read pg_cron's tables)."""
    try:
        out = run_lint_plpgsql(cron_db.url)
    finally:
        with connect(cron_db.url) as conn:  # the schema snapshot test dumps this database
            conn.execute("DROP EXTENSION IF EXISTS plpgsql_check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout == ""
    # Every PL/pgSQL routine of the project's schemas was checked (triggers once per table).
    checked = int(out.stderr.split(" functions and triggers checked")[0].split()[-1])
    assert checked >= cron_db.one(
        "SELECT count(*) FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace"
        " WHERE p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql')"
        " AND n.nspname IN ('api', 'ops', 'core', 'stripe', 'booking', 'ledger', 'jobs', 'migrate')") > 50


def test_plpgsql_check_fails_on_planted_bad_bodies_and_names_each(db):
    with connect(db.url) as conn:
        conn.execute(PLANTED)
    out = run_lint_plpgsql(db.url)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()

    def finding(prefix: str, text: str) -> bool:
        return any(line.startswith(prefix + ":") and text in line for line in lines)

    assert finding("core.lint_planted_missing_column", 'error column h.no_such_column does not exist (line 3)')
    assert finding("core.lint_planted_unused_variable", 'warning unused variable "v_unused" (line 3)')
    assert finding("core.lint_planted_injection", "security text type variable is not sanitized (line 5)")
    assert finding("core.lint_planted_hidden_cast", 'performance target type is different type than source type')
    assert finding("core.lint_planted_trigger [on core.error_groups]", 'error record "new" has no field "no_such_field"')
    assert finding("core.lint_planted_orphan_trigger", "attached to no table")
    # Only the planted ones, and the two cron functions: this per-test database has no pg_cron
    # (make lint checks the pg_cron database, where they pass).
    assert {line.split(":")[0].split(" [")[0] for line in lines} == {
        "core.lint_planted_missing_column", "core.lint_planted_unused_variable", "core.lint_planted_injection",
        "core.lint_planted_hidden_cast", "core.lint_planted_trigger", "core.lint_planted_orphan_trigger",
        "core.prune_cron_history", "core.sync_cron_jobs"}


def test_a_table_pragma_in_the_body_answers_for_a_temp_table_it_creates(db):
    """As api.reconcile does: without the pragma the temp table is unknown to the check."""
    body = """
    BEGIN
        CREATE TEMP TABLE IF NOT EXISTS lint_scratch (id int) ON COMMIT DROP;
        {pragma}
        RETURN (SELECT count(*)::int FROM pg_temp.lint_scratch);
    END;"""
    with connect(db.url) as conn:
        for name, pragma in (("core.lint_planted_no_pragma", ""),
                             ("core.lint_planted_pragma", "PERFORM 'PRAGMA:TABLE: lint_scratch (id int)';")):
            conn.execute(f"CREATE FUNCTION {name}() RETURNS int LANGUAGE plpgsql AS $$ {body.format(pragma=pragma)} $$")
        with conn.transaction():  # it runs, without the extension: the pragma is a constant
            assert conn.execute("SELECT core.lint_planted_pragma()").fetchone()[0] == 0
    out = run_lint_plpgsql(db.url)
    reported = {line.split(":")[0] for line in out.stdout.splitlines()}
    assert "core.lint_planted_no_pragma" in reported
    assert "core.lint_planted_pragma" not in reported


UNSAFE_MIGRATIONS = {
    # Builds the index while writes to a table buyers use wait.
    "V0010__index_without_concurrently.sql": (
        "CREATE INDEX holds_holder_idx ON booking.holds (holder);\n",
        "require-concurrent-index-creation"),
    # A volatile default rewrites the whole table under ACCESS EXCLUSIVE.
    "V0011__volatile_default.sql": (
        "ALTER TABLE booking.holds ADD COLUMN seen_at timestamptz NOT NULL DEFAULT clock_timestamp();\n",
        "adding-field-with-default"),
    # A CHECK added without NOT VALID scans the table under ACCESS EXCLUSIVE.
    "V0012__check_without_not_valid.sql": (
        "ALTER TABLE booking.holds ADD CONSTRAINT check_holds_holder_short CHECK (length(holder) < 100);\n",
        "constraint-missing-not-valid"),
    # No schema: lands wherever search_path points.
    "V0013__unqualified_table.sql": ("CREATE TABLE waitlist (id uuid PRIMARY KEY);\n", "require-table-schema"),
}


def tree_copy_with(tmp_path, files: dict[str, str]):
    """A copy of sql/migrations under tmp_path/sql/migrations with `files` added; squawk runs from
    tmp_path, as `make lint` runs from the repository."""
    target = tmp_path / "sql" / "migrations"
    shutil.copytree(SQL / "migrations", target)
    for name, text in files.items():
        (target / name).write_text(text)
    return tmp_path


def run_squawk(cwd) -> subprocess.CompletedProcess:
    return subprocess.run([*SQUAWK, "--no-error-on-unmatched-pattern", "sql/migrations/*.sql"],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def test_squawk_passes_on_the_tree(tmp_path):
    out = run_squawk(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_squawk_fails_on_each_planted_unsafe_migration_and_names_its_rule(tmp_path):
    for name, (text, rule) in UNSAFE_MIGRATIONS.items():
        cwd = tree_copy_with(tmp_path / name, {name: text})
        out = run_squawk(cwd)
        assert out.returncode != 0, (name, out.stdout)
        assert any(line.startswith(f"sql/migrations/{name}:") and f": warning: {rule} " in line
                   for line in out.stdout.splitlines()), out.stdout
        # The applied files are excluded by name: only the new one is reported.
        assert {line.split(":")[0] for line in out.stdout.splitlines() if ": warning: " in line} == {
            f"sql/migrations/{name}"}


def test_squawk_accepts_a_safe_migration_and_a_reasoned_exception(tmp_path):
    cwd = tree_copy_with(tmp_path, {
        "V0010__new_table.sql": (
            "CREATE TABLE booking.waitlist (\n    waitlist_id uuid PRIMARY KEY,\n    holder text NOT NULL\n);\n"
            "-- booking.waitlist is created above, in this transaction: empty, and nobody can use it yet.\n"
            "-- squawk-ignore require-concurrent-index-creation\n"
            "CREATE INDEX waitlist_holder_idx ON booking.waitlist (holder);\n"
            "ALTER TABLE booking.holds ADD COLUMN note text;\n"
        ),
    })
    out = run_squawk(cwd)
    assert out.returncode == 0, out.stdout + out.stderr


def test_make_lint_runs_sqlfluff_squawk_and_plpgsql_check():
    recipe = subprocess.run(["make", "-n", "lint"], capture_output=True, text=True, timeout=60, cwd=ROOT).stdout
    assert "sqlfluff lint" in recipe
    assert "squawk --config .squawk.toml" in recipe and "sql/migrations/*.sql" in recipe
    assert "scripts/lint_plpgsql.py" in recipe
