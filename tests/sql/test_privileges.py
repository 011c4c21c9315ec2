"""Least privilege, read from the catalog (contract: "Conventions", "Roles")."""

from __future__ import annotations

import psycopg
import pytest

from psycopg.types.json import Jsonb

from tests.pg import connect
from tests.sql.helpers import new_inventory, place, sqlstate_of
from tests.stripe_events import event, payment_intent, refund

OUR_SCHEMAS = ("api", "ops", "core", "stripe", "booking", "ledger", "jobs", "migrate")


def test_every_api_function_is_hardened(db):
    rows = db.rows(
        """
        SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig,
               coalesce((SELECT bool_or(a.grantee = 0 AND a.privilege_type = 'EXECUTE')
                         FROM aclexplode(p.proacl) AS a), p.proacl IS NULL) AS public_execute,
               obj_description(p.oid, 'pg_proc') AS comment
        FROM pg_proc AS p
        WHERE p.pronamespace = 'api'::regnamespace
        """
    )
    assert len(rows) >= 3
    for name, secdef, config, public_execute, comment in rows:
        assert secdef, f"{name} is not SECURITY DEFINER"
        assert config and "search_path=pg_catalog, pg_temp" in config, f"{name} has no pinned search_path"
        assert not public_execute, f"PUBLIC can execute {name}"
        assert comment, f"{name} has no COMMENT"


# CONTRACT.md, Roles: each duty's api functions, by name. A new api function fails
# test_each_api_function_is_granted_exactly_to_its_duties until it is named here.
EVERY_DUTY = {"log_error", "health"}
IDEMPOTENCY = {"idempotency_begin", "idempotency_complete", "idempotency_fail"}
DUTIES = {
    "booking_app": EVERY_DUTY | IDEMPOTENCY | {
        "create_inventory", "set_capacity", "availability",
        "place_hold", "extend_hold", "release_hold", "hold_status",
        "create_booking", "cancel_booking", "get_booking",
        "issue_refresh_token", "revoke_refresh_tokens",
        "join_waitlist", "waitlist_status", "leave_waitlist",
        "open_queue", "enter_queue", "queue_status", "place_hold_v2",
        "cache_versions", "bump_cache_version", "catalog", "set_unit_amount",
    },
    "booking_shim": EVERY_DUTY | IDEMPOTENCY | {
        "ingest_stripe_event", "ingest_stripe_events", "record_stripe_event_failure",
        "payment_intent_params", "record_payment_intent", "rotate_refresh_token",
    },
    "booking_worker": EVERY_DUTY | {
        "claim_jobs", "complete_job", "complete_jobs", "fail_job",
        "refunds_due", "record_stripe_refund", "reconcile",
    },
    "booking_ops": set(),
}
STRIPE_AND_JOBS = {
    "ingest_stripe_event", "ingest_stripe_events", "record_stripe_event_failure", "payment_intent_params",
    "record_payment_intent", "claim_jobs", "complete_job", "complete_jobs", "fail_job", "refunds_due",
    "record_stripe_refund", "reconcile",
}


def test_each_api_function_is_granted_exactly_to_its_duties(db):
    rows = db.rows(
        """
        SELECT p.proname, p.oid::regprocedure::text, r.rolname
        FROM pg_proc AS p
        CROSS JOIN unnest(%(roles)s::text[]) AS r (rolname)
        WHERE p.pronamespace = 'api'::regnamespace AND has_function_privilege(r.rolname, p.oid, 'EXECUTE')
        """,
        {"roles": list(DUTIES)},
    )
    granted = {(name, role) for name, _, role in rows}
    names = {name for (name,) in db.rows("SELECT proname FROM pg_proc WHERE pronamespace = 'api'::regnamespace")}
    named = set().union(*DUTIES.values())
    assert names - named == set(), "api functions that no duty list names (add them to grants.sql and DUTIES)"
    expected = {(name, role) for role, fns in DUTIES.items() for name in fns}
    assert granted - expected == set(), "granted outside its duty"
    assert expected - granted == set(), "a duty's function is not granted"
    # The point of the split: an application server reaches no Stripe or job function.
    assert {name for name, role in granted if role == "booking_app"} & STRIPE_AND_JOBS == set()


def test_only_internal_helpers_run_without_a_pinned_search_path(db):
    # Entry points pin search_path: api, ops, SECURITY DEFINER, and what pg_cron runs. The
    # helpers they call inherit it (a SET per call cost 5% of a webhook); no role but the
    # owner can reach a helper: neither its schema nor the function is granted.
    rows = db.rows(
        """
        SELECT p.oid::regprocedure::text, n.nspname, p.prosecdef, p.prokind,
               coalesce('search_path=pg_catalog, pg_temp' = ANY(p.proconfig), false) AS pinned,
               EXISTS (SELECT FROM unnest(%(roles)s::text[]) AS r (rolname)
                       WHERE has_function_privilege(r.rolname, p.oid, 'EXECUTE')
                          OR has_schema_privilege(r.rolname, n.oid, 'USAGE')) AS reachable,
               EXISTS (SELECT FROM core.cron_jobs AS j WHERE to_regproc(j.job_function) = p.oid) AS cron_job
        FROM pg_proc AS p
        JOIN pg_namespace AS n ON n.oid = p.pronamespace
        WHERE n.nspname = ANY(%(s)s)
        """,
        {"s": list(OUR_SCHEMAS), "roles": list(DUTIES)},
    )
    unpinned = [r for r in rows if not r[4]]
    assert len(unpinned) >= 20, "the helpers on the webhook path are expected to run unpinned"
    for name, schema, secdef, kind, pinned, reachable, cron_job in unpinned:
        assert schema not in ("api", "ops"), f"{name} is an entry point without a pinned search_path"
        assert not secdef, f"{name} is SECURITY DEFINER without a pinned search_path"
        assert not reachable, f"{name} runs unpinned but the app or ops role can reach it"
        assert not cron_job or kind == "p", f"pg_cron runs {name}: it must pin search_path"


def test_no_duty_has_a_privilege_on_any_table(db):
    rows = db.rows(
        """
        SELECT r.rolname, c.oid::regclass::text
        FROM pg_class AS c
        CROSS JOIN unnest(ARRAY['booking_app', 'booking_shim', 'booking_worker']) AS r (rolname)
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
          AND c.relnamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
          AND (has_table_privilege(r.rolname, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
               OR has_any_column_privilege(r.rolname, c.oid, 'SELECT, INSERT, UPDATE, REFERENCES'))
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


def test_an_application_login_cannot_forge_a_payment_and_writes_nothing(db):
    # The finding of issue 12: a login holding booking_app confirmed its own booking with
    # a hand-made payment_intent.succeeded. Now every Stripe and job function is 42501.
    with connect(db.app_url) as app:
        inventory = new_inventory(app, capacity=5, amount=1200)
        hold, _ = place(app, inventory, 1, holder="mallory")
        booking = app.execute("SELECT api.create_booking('k1', 'mallory', ARRAY[%s::uuid])", (hold,)).fetchone()[0]
        forged = event("payment_intent.succeeded", payment_intent("pi_forged", booking["booking_id"], 1200))
        counts = lambda: db.one(  # noqa: E731
            "SELECT (SELECT count(*) FROM stripe.events) + (SELECT count(*) FROM ledger.transactions)"
            " + (SELECT count(*) FROM jobs.jobs) + (SELECT count(*) FROM booking.booking_history)")
        before = counts()
        calls = [
            ("SELECT api.ingest_stripe_event(%s)", (Jsonb(forged),)),
            ("SELECT api.ingest_stripe_events(%s, NULL)", (Jsonb([forged]),)),
            ("SELECT api.record_stripe_event_failure(%s, 'XX000', 'x')", (Jsonb(forged),)),
            ("SELECT api.record_payment_intent(%s, 'pi_forged', 'secret', 'succeeded')", (booking["booking_id"],)),
            ("SELECT api.payment_intent_params(%s)", (booking["booking_id"],)),
            ("SELECT api.record_stripe_refund(%s)", (Jsonb(refund("re_forged", "pi_forged", 1200)),)),
            ("SELECT api.refunds_due(%s, NULL)", (booking["booking_id"],)),
            ("SELECT api.reconcile(now() - interval '1 day', now(), '[]')", None),
            ("SELECT * FROM api.claim_jobs('mallory', ARRAY['stripe.refund'], 10)", None),
            ("SELECT api.complete_job(gen_random_uuid(), gen_random_uuid())", None),
            ("SELECT api.fail_job(gen_random_uuid(), gen_random_uuid(), 'x', false)", None),
            ("SELECT * FROM api.rotate_refresh_token('\\x01', '\\x02')", None),
        ]
        for sql, params in calls:
            assert sqlstate_of(app, sql, params) == "42501", sql
        assert counts() == before
        assert db.one("SELECT status FROM booking.bookings WHERE booking_id = %s", (booking["booking_id"],)) \
            == "pending_payment"


def test_the_shim_and_the_worker_logins_cannot_do_each_others_duty(db):
    with connect(db.shim_url) as shim:
        assert sqlstate_of(shim, "SELECT * FROM api.claim_jobs('w', ARRAY['stripe.refund'], 10)") == "42501"
        assert sqlstate_of(shim, "SELECT api.create_inventory('x', 1, 1, 'usd')") == "42501"
        assert shim.execute("SELECT api.ingest_stripe_event(%s)", (Jsonb(event()),)).fetchone()[0] == "ignored"
    with connect(db.worker_url) as worker:
        assert sqlstate_of(worker, "SELECT api.ingest_stripe_event(%s)", (Jsonb(event()),)) == "42501"
        assert sqlstate_of(worker, "SELECT api.get_booking(gen_random_uuid())") == "42501"
        assert worker.execute("SELECT count(*) FROM api.claim_jobs('w', ARRAY['stripe.refund'], 10)").fetchone()[0] == 0
