"""The shim refuses to start without its settings, and answers 503 while the database is down."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.pg import ROOT, env_with
from tests.shim.server import SHIM_COMMAND, free_port, shim
from tests.stripe_events import encode, event, sign


@pytest.mark.parametrize(
    "env, missing",
    [
        ({"STRIPE_WEBHOOK_SECRET": "whsec_x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://127.0.0.1:1/x"}, "STRIPE_WEBHOOK_SECRET"),
        ({"DATABASE_URL": "postgresql://127.0.0.1:1/x", "STRIPE_WEBHOOK_SECRET": " , "}, "STRIPE_WEBHOOK_SECRET"),
    ],
)
def test_refuses_to_start_naming_the_missing_setting(env, missing):
    secret = env.get("STRIPE_WEBHOOK_SECRET", "")
    proc = subprocess.run(
        [*SHIM_COMMAND, "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=ROOT, env=env_with(**env), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert f"{missing} is required" in proc.stderr
    if secret.strip(" ,"):
        assert secret not in proc.stderr


def test_database_down_is_503_with_json_and_healthz_still_200():
    # Nothing listens on this port: the database is unreachable.
    down_url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing?connect_timeout=1"
    secret = "whsec_down_test"
    with shim(down_url, secret, extra_env={"DB_POOL_MIN_SIZE": "0"}) as base:
        assert httpx.get(base + "/healthz").status_code == 200
        ready = httpx.get(base + "/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["status"] == "down"
        body = encode(event())
        resp = httpx.post(base + "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body, secret)},
                          timeout=30)
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "database_unavailable"
        assert resp.headers["X-Request-ID"]
