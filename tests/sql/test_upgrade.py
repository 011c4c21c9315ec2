"""An upgrade from the previous release (e446ce8, where booking_app could call every api
function) done exactly as README.md, "Roles by duty and upgrading", tells a DBA: the shim
and worker logins get their duty roles, the current sql/migrate.sh runs, and afterwards
each login can do its own duty and no other, the queued e-mail job carries its message
(V0008), and the schema is the same as a fresh build's (sql/schema.sql)."""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import tarfile
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.pg import ROOT, SQL, connect, migrate, start_cluster, url_for
from tests.stripe_events import event, payment_intent

PREVIOUS_RELEASE = "e446ce8"
# The last commit with every function file flat in sql/functions (before issue 13's layers).
FLAT_FUNCTION_FILES = "297b410"


def previous_release_sql(target, commit: str = PREVIOUS_RELEASE) -> None:
    """sql/ of the previous release, from git (git archive, as the README's CI note says)."""
    have = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"],
                          capture_output=True)
    if have.returncode != 0:
        pytest.skip(f"commit {commit} is not in this clone (a shallow clone?): fetch the full history")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "sql"],
                             capture_output=True, check=True, timeout=60).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target)


def run_sql(url: str, statements: str) -> None:
    with connect(url) as conn:
        conn.execute(statements)


def sqlstate(url: str, sql: str, params=None) -> str | None:
    try:
        with connect(url) as conn:
            conn.execute(sql, params)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


@pytest.fixture
def own_cluster():
    """A cluster of its own: roles are cluster-wide, and the previous release had no
    booking_shim or booking_worker role (the session cluster has them)."""
    pg = start_cluster(fsync=False)
    try:
        yield pg.url()  # its database is the one pg_cron runs in, as in production
    finally:
        pg.stop()


def urls(admin: str) -> dict[str, str]:
    dbname = admin.rsplit("/", 1)[1]
    return {login: url_for(admin, dbname, login) for login in ("app_login", "shim_login", "worker_login")}


def previous_release_with_data(admin: str, tmp_path, logins_sql: str, shim_login: str):
    """The previous release migrated into the cluster's pg_cron database, its logins made
    by logins_sql, and some data made through its api: an inventory, a booking paid
    through a Stripe event (so confirmed, its e-mail job queued), as the old shim did."""
    previous_release_sql(tmp_path)
    old = migrate(admin, sql_dir=tmp_path / "sql")
    assert "applying versioned migrations/V0007" in old.stdout
    assert "V0008" not in old.stdout
    run_sql(admin, logins_sql)
    with connect(urls(admin)["app_login"]) as app:
        inventory = app.execute(
            "SELECT api.create_inventory(%s, 10, 2500, 'usd', '15 minutes', '10 minutes', 1)",
            (f"sku-{uuid.uuid4().hex[:8]}",)).fetchone()[0]
        hold = app.execute("SELECT hold_id FROM api.place_hold(%s, 2, 'alice', NULL)", (inventory,)).fetchone()[0]
        booking = app.execute("SELECT api.create_booking(%s, 'alice', %s::uuid[])",
                              (uuid.uuid4().hex, [hold])).fetchone()[0]
    with connect(url_for(admin, admin.rsplit("/", 1)[1], shim_login)) as shim:
        paid = event("payment_intent.succeeded", payment_intent("pi_old", booking["booking_id"], booking["amount"]))
        assert shim.execute("SELECT api.ingest_stripe_event(%s)", (Jsonb(paid),)).fetchone()[0] == "processed"
    with connect(admin) as conn:
        old_payload = conn.execute("SELECT payload FROM jobs.jobs WHERE kind = 'email.booking_confirmed'").fetchone()[0]
    assert old_payload.get("booking_id") == str(booking["booking_id"]) and "holder" not in old_payload
    return booking, paid


def assert_each_login_does_its_duty_and_no_other(admin: str, booking: dict, paid: dict) -> None:
    app_url, shim_url, worker_url = (urls(admin)[k] for k in ("app_login", "shim_login", "worker_login"))
    # Each login can do its duty ...
    with connect(shim_url) as shim:
        again = event("payment_intent.succeeded", payment_intent("pi_old", booking["booking_id"], booking["amount"]))
        assert shim.execute("SELECT api.ingest_stripe_event(%s)", (Jsonb(again),)).fetchone()[0] == "processed"
        assert shim.execute("SELECT api.ingest_stripe_event(%s)", (Jsonb(paid),)).fetchone()[0] == "duplicate"
    with connect(worker_url) as worker:
        claimed = worker.execute(
            "SELECT kind, payload FROM api.claim_jobs('upgrade-test', ARRAY['email.booking_confirmed'], 10)").fetchall()
    assert len(claimed) == 1
    kind, payload = claimed[0]
    assert kind == "email.booking_confirmed"
    # V0008 gave the job queued by the previous release its message.
    assert payload["booking_id"] == str(booking["booking_id"])
    assert (payload["holder"], payload["amount"], payload["currency"]) == ("alice", booking["amount"], "usd")
    assert [i["quantity"] for i in payload["items"]] == [2]

    # ... and no other; nothing of this is written.
    counts = ("SELECT (SELECT count(*) FROM stripe.events), (SELECT count(*) FROM jobs.jobs),"
              " (SELECT count(*) FROM booking.inventory), (SELECT count(*) FROM ledger.transactions)")
    with connect(admin) as conn:
        before = conn.execute(counts).fetchone()
    forged = event("payment_intent.succeeded", payment_intent("pi_forged", booking["booking_id"], booking["amount"]))
    assert sqlstate(app_url, "SELECT api.ingest_stripe_event(%s)", (Jsonb(forged),)) == "42501"
    assert sqlstate(app_url, "SELECT * FROM api.claim_jobs('app', ARRAY['email.booking_confirmed'], 1)") == "42501"
    assert sqlstate(shim_url, "SELECT api.create_inventory('sku-x', 1, 100, 'usd')") == "42501"
    assert sqlstate(worker_url, "SELECT api.ingest_stripe_event(%s)", (Jsonb(forged),)) == "42501"
    with connect(admin) as conn:
        assert conn.execute(counts).fetchone() == before
    # The application login still does its own.
    with connect(app_url) as app:
        assert app.execute("SELECT (api.get_booking(%s)) ->> 'status'", (booking["booking_id"],)).fetchone()[0] \
            == "confirmed"


def assert_schema_is_a_fresh_builds(admin: str) -> None:
    """The committed snapshot, which test_migrations.py::test_a_fresh_build_equals_the_committed_snapshot
    compares with a fresh build."""
    upgraded = subprocess.run([str(ROOT / "scripts" / "snapshot.sh"), admin], capture_output=True, text=True,
                              check=True, timeout=120).stdout
    assert upgraded == (SQL / "schema.sql").read_text(), "the upgraded schema differs from a fresh build"


def test_an_upgrade_from_the_previous_release_as_the_readme_says(own_cluster, tmp_path):
    admin = own_cluster
    # The previous release's logins, as its README said: every caller holding booking_app
    # (the worker ran as the shim's login).
    booking, paid = previous_release_with_data(
        admin, tmp_path,
        "CREATE ROLE app_login LOGIN; GRANT booking_app TO app_login;"
        " CREATE ROLE shim_login LOGIN; GRANT booking_app TO shim_login;",
        "shim_login")
    with connect(admin) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('booking_shim', 'booking_worker')").fetchone()[0] == 0

    # The upgrade, step by step as README.md says (section "Roles by duty and upgrading").
    # 1-2. The duty roles, granted to the logins that will run the shim and the worker. The
    # old shim keeps working meanwhile: its login holds booking_app and booking_shim.
    run_sql(admin, """
        CREATE ROLE booking_shim NOLOGIN;
        CREATE ROLE booking_worker NOLOGIN;
        GRANT booking_shim TO shim_login;
        CREATE ROLE worker_login LOGIN;
        GRANT booking_worker TO worker_login;
    """)
    # 3. The current release's migrator.
    new = migrate(admin)
    assert "applying versioned migrations/V0008__confirmation_jobs_carry_their_message.sql" in new.stdout
    assert "applying repeatable grants.sql" in new.stdout
    # 4-5. (restart the shim and the worker on their logins) The shim's login gives up booking_app.
    run_sql(admin, "REVOKE booking_app FROM shim_login;")

    assert_each_login_does_its_duty_and_no_other(admin, booking, paid)
    assert_schema_is_a_fresh_builds(admin)


def test_an_embedded_cluster_of_the_previous_make_run_upgrades_by_migrating(own_cluster, tmp_path):
    """The previous `make run` made booking_shim itself the shim's LOGIN, holding booking_app:
    the migrator turns it into the NOLOGIN duty role, and the current `make run` creates the
    logins (the same statements as scripts/run.sh)."""
    admin = own_cluster
    booking, paid = previous_release_with_data(
        admin, tmp_path,
        "CREATE ROLE booking_shim LOGIN; GRANT booking_app TO booking_shim;"
        " CREATE ROLE app_login LOGIN; GRANT booking_app TO app_login;",
        "booking_shim")
    migrate(admin)
    with connect(admin) as conn:
        assert conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'booking_shim'").fetchone()[0] is False
        assert conn.execute("SELECT pg_has_role('booking_shim', 'booking_app', 'MEMBER')").fetchone()[0] is False
    # run.sh's own create_logins call (scripts/lib/serve-common.sh), run against this cluster.
    run_sh = (ROOT / "scripts" / "run.sh").read_text()
    call = re.search(r'^create_logins "\$admin_url"(?:[^\n]*\\\n)*[^\n]*$', run_sh, re.M).group(0)
    assert "shim_login:booking_shim" in call, call
    script = f"source scripts/lib/serve-common.sh\nadmin_url={shlex.quote(admin)}\n{call}\n"
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, text=True, capture_output=True, timeout=60,
                            env=dict(os.environ, RUN_STATE_DIR=str(tmp_path / "run-state")))
    assert result.returncode == 0, result.stderr
    with connect(admin) as conn:
        assert conn.execute("SELECT pg_has_role('shim_login', 'booking_shim', 'MEMBER')").fetchone()[0]
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        connect(url_for(admin, admin.rsplit("/", 1)[1], "booking_shim")).close()

    assert_each_login_does_its_duty_and_no_other(admin, booking, paid)
    assert_schema_is_a_fresh_builds(admin)


def test_flat_function_files_upgrade_to_the_schema_folders(own_cluster, tmp_path):
    """A database migrated with every function file flat in sql/functions: their files are
    gone (functions/holds.sql is functions/booking/holds.sql, ...) and some functions were
    renamed (stripe.outcome_of, stripe.apply_event, booking.take_more_units, ...). The current
    migrator applies the files under their new names and drops the old functions; a re-run
    has nothing to do, and the schema is a fresh build's (no old name left behind)."""
    admin = own_cluster
    previous_release_sql(tmp_path, FLAT_FUNCTION_FILES)
    old = migrate(admin, sql_dir=tmp_path / "sql")
    assert "applying repeatable functions/holds.sql" in old.stdout
    with connect(admin) as conn:
        assert conn.execute("SELECT to_regprocedure('stripe.outcome_of(jsonb)') IS NOT NULL").fetchone()[0]
    new = migrate(admin)
    assert "applying repeatable functions/booking/holds.sql" in new.stdout
    assert "nothing to apply" in migrate(admin).stdout
    with connect(admin) as conn:
        assert conn.execute("SELECT to_regprocedure('stripe.outcome_of(jsonb)') IS NULL").fetchone()[0]
    assert_schema_is_a_fresh_builds(admin)
