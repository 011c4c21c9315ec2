"""POST /auth/refresh: rotation, reuse detection, expiry, revocation, the pepper."""

from __future__ import annotations

import hashlib
import hmac
import subprocess

import httpx
import jwt
import pytest

from tests.pg import ROOT, connect, env_with
from tests.shim.server import SHIM_COMMAND, free_port, shim

JWT_SECRET = "j" * 40
PEPPER = "pepper-" + "x" * 40
WEBHOOK = "whsec_auth_tests"


def h(token: str, pepper: str = PEPPER) -> bytes:
    return hmac.new(pepper.encode(), token.encode(), hashlib.sha256).digest()


@pytest.fixture(scope="module")
def server(module_db):
    with shim(module_db.shim_url, WEBHOOK, extra_env={"JWT_SECRET": JWT_SECRET, "REFRESH_TOKEN_PEPPER": PEPPER}) as base:
        yield base


def login(db, user, token):
    with connect(db.app_url) as conn:
        return conn.execute("SELECT api.issue_refresh_token(%s, %s)", (user, h(token))).fetchone()[0]


def refresh(base, token):
    return httpx.post(base + "/auth/refresh", json={"refresh_token": token}, timeout=30)


def test_rotation_gives_a_new_token_and_an_access_token(server, module_db):
    family = login(module_db, "user-1", "first-token")
    resp = refresh(server, "first-token")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    assert body["refresh_token"] != "first-token" and len(body["refresh_token"]) >= 40
    claims = jwt.decode(body["access_token"], JWT_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["fam"]) == ("user-1", str(family))
    assert refresh(server, body["refresh_token"]).status_code == 200
    # The database holds hashes only.
    stored = [bytes(r[0]) for r in module_db.rows("SELECT token_hash FROM core.refresh_tokens WHERE user_id = 'user-1'")]
    assert h(body["refresh_token"]) in stored and all(b"token" not in s for s in stored)


def test_reuse_revokes_the_family_and_answers_ra002(server, module_db):
    login(module_db, "user-2", "stolen")
    new = refresh(server, "stolen").json()["refresh_token"]
    module_db.one("UPDATE core.refresh_tokens SET rotated_at = now() - interval '1 minute' "
                "WHERE user_id = 'user-2' AND rotated_at IS NOT NULL RETURNING 1")
    resp = refresh(server, "stolen")
    assert (resp.status_code, resp.json()["error"]["code"]) == (401, "RA002")
    resp = refresh(server, new)  # the legitimate holder is logged out too
    assert (resp.status_code, resp.json()["error"]["code"]) == (401, "RA001")
    assert module_db.one("SELECT count(*) FROM ops.open_errors WHERE source = 'auth.refresh' AND severity = 'critical'") == 1


def test_unknown_expired_and_revoked_are_ra001(server, module_db):
    assert refresh(server, "never-issued").json()["error"]["code"] == "RA001"
    login(module_db, "user-3", "old")
    module_db.one("UPDATE core.refresh_tokens SET expires_at = now() - interval '1 second' WHERE user_id = 'user-3' "
                "RETURNING 1")
    assert refresh(server, "old").status_code == 401
    login(module_db, "user-4", "t4")
    with connect(module_db.app_url) as conn:
        conn.execute("SELECT api.revoke_refresh_tokens('user-4')")
    assert refresh(server, "t4").json()["error"]["code"] == "RA001"
    assert httpx.post(server + "/auth/refresh", json={"x": 1}).status_code == 400


def test_a_shim_with_another_pepper_knows_no_token(module_db):
    login(module_db, "user-5", "t5")
    with shim(module_db.shim_url, WEBHOOK, extra_env={"JWT_SECRET": JWT_SECRET, "REFRESH_TOKEN_PEPPER": "q" * 40}) as base:
        resp = refresh(base, "t5")
    assert (resp.status_code, resp.json()["error"]["code"]) == (401, "RA001")


def test_short_secrets_refuse_to_start():
    proc = subprocess.run(
        [*SHIM_COMMAND, "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=ROOT, env=env_with(DATABASE_URL="postgresql://127.0.0.1:1/x", STRIPE_WEBHOOK_SECRET="whsec_x",
                               JWT_SECRET="short", REFRESH_TOKEN_PEPPER=PEPPER),
        capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "JWT_SECRET must be at least 32 bytes" in proc.stderr
