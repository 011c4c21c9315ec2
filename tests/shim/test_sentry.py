"""Sentry: events reach SENTRY_DSN when it is set (a local receiver here), nothing otherwise."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.pg import ROOT, database_from_template, env_with, wait_until
from tests.shim.receiver import post_receiver
from tests.shim.server import shim
from tests.shim.test_webhook import plant_apply_failure
from tests.stripe_events import encode, event, sign

SECRET = "whsec_sentry_tests"


@pytest.fixture
def receiver():
    with post_receiver() as running:
        yield running


@pytest.fixture
def broken_db(migrated):
    """A database where applying any event fails (a simulated bug)."""
    with database_from_template(migrated) as db:
        plant_apply_failure(db, "NEW.status <> 'failed'", "simulated bug for sentry")
        yield db


def deliver(base):
    body = encode(event())
    return httpx.post(base + "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body, SECRET),
                                                                       "X-Request-ID": "req-sentry-1"}, timeout=30)


def wait_for(received, seconds=10):
    wait_until(lambda: received, seconds)
    return received


def test_a_failure_is_sent_to_sentry_with_the_correlation_id(broken_db, receiver):
    port, posts = receiver
    dsn = f"http://publickey@127.0.0.1:{port}/1"
    with shim(broken_db.shim_url, SECRET, extra_env={"SENTRY_DSN": dsn}) as base:
        assert deliver(base).status_code == 500
        got = wait_for(posts)
    assert got, "nothing reached the Sentry receiver"
    assert got[0].path.startswith("/api/1/")
    assert b"simulated bug for sentry" in got[0].body and b"req-sentry-1" in got[0].body


@pytest.mark.parametrize("dsn, active", [("", False), ("http://key@127.0.0.1:9/1", True)])
def test_sentry_is_set_up_only_with_a_dsn(dsn, active):
    """init_sentry in a fresh process: an active Sentry client only when SENTRY_DSN is set."""
    code = ("import sentry_sdk; from pyshim.monitoring import init_sentry; "
            "init_sentry('pyshim'); print(sentry_sdk.get_client().is_active())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env_with(SENTRY_DSN=dsn),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(active)
