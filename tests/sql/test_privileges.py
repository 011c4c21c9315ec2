"""Least privilege, read from the catalog (contract: "Conventions", "Roles")."""

from __future__ import annotations

import psycopg
import pytest

from tests.pg import connect

OUR_SCHEMAS = ("api", "ops", "core", "stripe", "booking", "ledger", "jobs", "migrate")


def test_every_api_function_is_hardened(db):
    rows = db.rows(
        """
        SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig,
               coalesce((SELECT bool_or(a.grantee = 0 AND a.privilege_type = 'EXECUTE')
                         FROM aclexplode(p.proacl) AS a), p.proacl IS NULL) AS public_execute,
               has_function_privilege('booking_app', p.oid, 'EXECUTE') AS app_execute,
               obj_description(p.oid, 'pg_proc') AS comment
        FROM pg_proc AS p
        WHERE p.pronamespace = 'api'::regnamespace
        """
    )
    assert len(rows) >= 3
    for name, secdef, config, public_execute, app_execute, comment in rows:
        assert secdef, f"{name} is not SECURITY DEFINER"
        assert config and "search_path=pg_catalog, pg_temp" in config, f"{name} has no pinned search_path"
        assert not public_execute, f"PUBLIC can execute {name}"
        assert app_execute, f"booking_app cannot execute {name}"
        assert comment, f"{name} has no COMMENT"


def test_only_internal_helpers_run_without_a_pinned_search_path(db):
    # Entry points pin search_path: api, ops, SECURITY DEFINER, and what pg_cron runs. The
    # helpers they call inherit it (a SET per call cost 5% of a webhook); no role but the
    # owner can reach a helper: neither its schema nor the function is granted.
    rows = db.rows(
        """
        SELECT p.oid::regprocedure::text, n.nspname, p.prosecdef, p.prokind,
               coalesce('search_path=pg_catalog, pg_temp' = ANY(p.proconfig), false) AS pinned,
               has_function_privilege('booking_app', p.oid, 'EXECUTE') OR has_schema_privilege('booking_app', n.oid, 'USAGE')
                   OR has_function_privilege('booking_ops', p.oid, 'EXECUTE') OR has_schema_privilege('booking_ops', n.oid, 'USAGE')
                   AS reachable,
               EXISTS (SELECT FROM core.cron_jobs AS j WHERE to_regproc(j.job_function) = p.oid) AS cron_job
        FROM pg_proc AS p
        JOIN pg_namespace AS n ON n.oid = p.pronamespace
        WHERE n.nspname = ANY(%(s)s)
        """,
        {"s": list(OUR_SCHEMAS)},
    )
    unpinned = [r for r in rows if not r[4]]
    assert len(unpinned) >= 20, "the helpers on the webhook path are expected to run unpinned"
    for name, schema, secdef, kind, pinned, reachable, cron_job in unpinned:
        assert schema not in ("api", "ops"), f"{name} is an entry point without a pinned search_path"
        assert not secdef, f"{name} is SECURITY DEFINER without a pinned search_path"
        assert not reachable, f"{name} runs unpinned but the app or ops role can reach it"
        assert not cron_job or kind == "p", f"pg_cron runs {name}: it must pin search_path"


def test_booking_app_and_ops_have_no_privilege_on_any_table(db):
    rows = db.rows(
        """
        SELECT c.oid::regclass::text
        FROM pg_class AS c
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
          AND c.relnamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
          AND (has_table_privilege('booking_app', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
               OR has_any_column_privilege('booking_app', c.oid, 'SELECT, INSERT, UPDATE, REFERENCES'))
        """
    )
    assert rows == []
    # booking_ops reads views in ops only.
    ops_tables = db.rows(
        """
        SELECT c.oid::regclass::text
        FROM pg_class AS c
        WHERE c.relkind IN ('r', 'p', 'm', 'f')
          AND c.relnamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
          AND has_table_privilege('booking_ops', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
        """
    )
    assert ops_tables == []


def test_booking_owner_owns_every_object(db):
    rows = db.rows(
        """
        SELECT 'relation ' || c.oid::regclass::text, pg_get_userbyid(c.relowner)
        FROM pg_class AS c WHERE c.relnamespace::regnamespace::text = ANY(%(s)s)
        UNION ALL
        SELECT 'function ' || p.oid::regprocedure::text, pg_get_userbyid(p.proowner)
        FROM pg_proc AS p WHERE p.pronamespace::regnamespace::text = ANY(%(s)s)
        UNION ALL
        SELECT 'schema ' || n.nspname, pg_get_userbyid(n.nspowner)
        FROM pg_namespace AS n WHERE n.nspname = ANY(%(s)s)
        """,
        {"s": list(OUR_SCHEMAS)},
    )
    assert len(rows) > 10
    assert [name for name, owner in rows if owner != "booking_owner"] == []


def test_the_app_login_calls_api_but_cannot_read_tables(db):
    with connect(db.app_url) as conn:
        assert conn.execute("SELECT api.health() ->> 'status'").fetchone()[0] == "ok"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM stripe.events")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM ops.stripe_events")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT core.run_cron_job('booking-prune-cron-history')")


def test_the_ops_login_reads_views_but_not_tables_or_api(db):
    with connect(db.ops_url) as conn:
        assert conn.execute("SELECT count(*) FROM ops.stripe_events").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM ops.cron_jobs").fetchone()[0] >= 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM stripe.events")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT api.ingest_stripe_event('{}')")
