"""Sentry: events reach SENTRY_DSN when it is set (a local receiver here), nothing otherwise."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest

from tests.pg import ROOT, connect, database_from_template, env_with, wait_until
from tests.shim.server import free_port, shim
from tests.stripe_events import encode, event, sign

SECRET = "whsec_sentry_tests"


@pytest.fixture
def receiver():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            received.append((self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.received = received
    yield server
    server.shutdown()


@pytest.fixture
def broken_db(migrated):
    """A database where applying any event fails (a simulated bug)."""
    with database_from_template(migrated) as db:
        with connect(db.url) as conn:
            conn.execute("""
                CREATE FUNCTION stripe.test_explode() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.status <> 'failed' THEN
                        RAISE EXCEPTION 'simulated bug for sentry' USING ERRCODE = 'XX000';
                    END IF;
                    RETURN NEW;
                END $$;
                CREATE TRIGGER test_explode BEFORE INSERT OR UPDATE ON stripe.events
                    FOR EACH ROW EXECUTE FUNCTION stripe.test_explode();
            """)
        yield db


def deliver(base):
    body = encode(event())
    return httpx.post(base + "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body, SECRET),
                                                                       "X-Request-ID": "req-sentry-1"}, timeout=30)


def wait_for(received, seconds=10):
    wait_until(lambda: received, seconds)
    return received


def test_a_failure_is_sent_to_sentry_with_the_correlation_id(broken_db, receiver):
    dsn = f"http://publickey@127.0.0.1:{receiver.server_port}/1"
    with shim(broken_db.shim_url, SECRET, extra_env={"SENTRY_DSN": dsn}) as base:
        assert deliver(base).status_code == 500
        got = wait_for(receiver.received)
    assert got, "nothing reached the Sentry receiver"
    path, body = got[0]
    assert path.startswith("/api/1/")
    assert b"simulated bug for sentry" in body and b"req-sentry-1" in body


@pytest.mark.parametrize("dsn, active", [("", False), ("http://key@127.0.0.1:9/1", True)])
def test_sentry_is_set_up_only_with_a_dsn(dsn, active):
    """init_sentry in a fresh process: an active Sentry client only when SENTRY_DSN is set."""
    code = ("import sentry_sdk; from pyshim.monitoring import init_sentry; "
            "init_sentry('pyshim'); print(sentry_sdk.get_client().is_active())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env_with(SENTRY_DSN=dsn),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(active)
