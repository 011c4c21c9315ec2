"""api.log_error with grouping and resolution; refresh-token families."""

from __future__ import annotations

import hashlib
import hmac
import pytest
from psycopg.types.json import Jsonb

from tests.pg import connect
from tests.sql.helpers import sqlstate_of

PEPPER = b"p" * 32


def h(token: str) -> bytes:
    return hmac.new(PEPPER, token.encode(), hashlib.sha256).digest()


def log(conn, severity, source, message, correlation_id=None):
    with conn.transaction():
        if correlation_id:
            conn.execute("SELECT set_config('app.correlation_id', %s, true)", (correlation_id,))
        return conn.execute("SELECT api.log_error(%s, %s, %s, 'detail', %s)",
                            (severity, source, message, Jsonb({"k": 1}))).fetchone()[0]


def test_errors_group_by_fingerprint_and_reopen_after_resolution(db, app):
    log(app, "error", "webhook", "booking 1234 failed: deadlock", "req-1")
    log(app, "error", "webhook", "booking 98 failed: deadlock", "req-2")
    log(app, "warning", "worker", "smtp slow")
    rows = db.rows("SELECT source, message, count FROM ops.open_errors ORDER BY source")
    assert [(s, c) for s, _, c in rows] == [("webhook", 2), ("worker", 1)]
    assert db.rows("SELECT correlation_id FROM ops.errors WHERE source = 'webhook' ORDER BY error_id") == [
        ("req-1",), ("req-2",)]
    fingerprint = db.one("SELECT fingerprint FROM ops.open_errors WHERE source = 'webhook'")
    with connect(db.ops_url) as ops:
        assert ops.execute("SELECT ops.resolve_error(%s, 'oncall')", (fingerprint,)).fetchone()[0] == 1
        assert ops.execute("SELECT ops.resolve_error(%s, 'oncall')", (fingerprint,)).fetchone()[0] == 0
    assert db.one("SELECT count(*) FROM ops.open_errors") == 1
    log(app, "error", "webhook", "booking 5 failed: deadlock")
    assert db.one("SELECT count FROM ops.open_errors WHERE fingerprint = %s", (fingerprint,)) == 3


def test_a_critical_error_enqueues_one_alert_per_group_per_ten_minutes(db, app):
    log(app, "critical", "ledger", "imbalance in txn 7", "req-crit")
    log(app, "critical", "ledger", "imbalance in txn 8")
    assert db.rows("SELECT kind, payload ->> 'correlation_id' FROM jobs.jobs") == [("alert.notify", "req-crit")]


@pytest.mark.parametrize("args, code", [
    (("fatal", "s", "m"), "22023"), ((None, "s", "m"), "22004"), (("error", "", "m"), "22023"),
    (("error", "s", "m" * 2001), "22001"), (("error", "s" * 101, "m"), "22001"),
])
def test_log_error_bad_arguments(db, app, args, code):
    assert sqlstate_of(app, "SELECT api.log_error(%s, %s, %s)", args) == code
    assert db.one("SELECT count(*) FROM core.errors") == 0


def rotate(conn, old, new):
    return conn.execute("SELECT * FROM api.rotate_refresh_token(%s, %s)", (h(old), h(new))).fetchone()


def test_rotation_and_the_database_holds_no_token_in_clear(db, app, shim):
    family = app.execute("SELECT api.issue_refresh_token('u1', %s)", (h("t1"),)).fetchone()[0]
    assert rotate(shim, "t1", "t2") == ("rotated", "u1", family)
    assert rotate(shim, "t2", "t3") == ("rotated", "u1", family)
    assert sqlstate_of(shim, "SELECT * FROM api.rotate_refresh_token(%s, %s)", (h("nope"), h("x"))) == "RA001"
    stored = db.rows("SELECT token_hash FROM core.refresh_tokens")
    assert sorted(bytes(r[0]) for r in stored) == sorted(h(t) for t in ("t1", "t2", "t3"))


def test_reuse_after_the_grace_period_revokes_the_family_and_logs_a_critical_error(db, app, shim):
    app.execute("SELECT api.issue_refresh_token('u2', %s)", (h("a1"),))
    rotate(shim, "a1", "a2")
    db.one("UPDATE core.refresh_tokens SET rotated_at = now() - interval '11 seconds' "
           "WHERE rotated_at IS NOT NULL RETURNING 1")
    outcome, user, _ = rotate(shim, "a1", "a3")  # a stolen copy of a1 comes back
    assert (outcome, user) == ("reuse_detected", "u2")
    assert sqlstate_of(shim, "SELECT * FROM api.rotate_refresh_token(%s, %s)", (h("a2"), h("a4"))) == "RA001"
    assert db.one("SELECT count(*) FROM core.refresh_tokens WHERE revoked_at IS NULL") == 0
    assert db.rows("SELECT severity, source FROM ops.open_errors") == [("critical", "auth.refresh")]


def test_within_the_grace_period_the_client_that_lost_the_answer_rotates_again(db, app, shim):
    app.execute("SELECT api.issue_refresh_token('u3', %s)", (h("b1"),))
    rotate(shim, "b1", "b2")
    assert rotate(shim, "b1", "b3")[0] == "rotated"  # the answer b2 was lost
    assert sqlstate_of(shim, "SELECT * FROM api.rotate_refresh_token(%s, %s)", (h("b2"), h("x"))) == "RA001"
    assert rotate(shim, "b3", "b4")[0] == "rotated"
    assert db.one("SELECT count(*) FROM core.refresh_tokens WHERE revoked_at IS NULL AND rotated_at IS NULL") == 1


def test_expired_and_revoked_tokens_are_ra001(db, app, shim):
    app.execute("SELECT api.issue_refresh_token('u4', %s, '1 minute')", (h("c1"),))
    db.one("UPDATE core.refresh_tokens SET expires_at = now() - interval '1 second' RETURNING 1")
    assert sqlstate_of(shim, "SELECT * FROM api.rotate_refresh_token(%s, %s)", (h("c1"), h("c2"))) == "RA001"
    app.execute("SELECT api.issue_refresh_token('u4', %s)", (h("d1"),))
    assert app.execute("SELECT api.revoke_refresh_tokens('u4')").fetchone()[0] == 1
    assert sqlstate_of(shim, "SELECT * FROM api.rotate_refresh_token(%s, %s)", (h("d1"), h("d2"))) == "RA001"
    assert sqlstate_of(app, "SELECT api.issue_refresh_token('u', %s)", (b"short",)) == "22023"
