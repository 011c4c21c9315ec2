"""GET /ops and GET /metrics through a real uvicorn process: the OPS_TOKEN rule (404, 401,
200), the console's panels with planted data (escaped, no secret), the login cookie, and
/metrics parsed with prometheus_client's own parser."""

from __future__ import annotations

import subprocess
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyshim.settings import ConfigError, Settings
from tests.pg import ROOT, connect, env_with
from tests.shim.server import SHIM_COMMAND, free_port, shim
from tests.stripe_events import encode, event, sign
from tests.sql.helpers import new_inventory, place

TOKEN = "ops-token-" + "k" * 40
WEBHOOK = "whsec_console_tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CLIENT_SECRET = "pi_console_secret_SENTINEL42"
HOSTILE = "<script>alert('x')</script> & \"quotes\""


@pytest.fixture(scope="module")
def planted(module_db):
    """A critical error with markup in it, an inventory with a hold, a booking whose
    PaymentIntent has a client secret, a dead Stripe event."""
    sku = "console-sku-" + uuid.uuid4().hex[:6]
    with connect(module_db.app_url) as app:
        app.execute("SELECT api.log_error('critical', 'console-test', %s, 'detail-SENTINEL', '{}', NULL)",
                    (f"payments are down {HOSTILE}",))
        inventory = new_inventory(app, capacity=20, sku=sku)
        hold = place(app, inventory, 3, "holder-1")
        booking = app.execute("SELECT api.create_booking(%s, 'holder-1', %s::uuid[])",
                              (uuid.uuid4().hex, [hold[0]])).fetchone()[0]["booking_id"]
    with connect(module_db.shim_url) as shim_conn:
        shim_conn.execute("SELECT api.record_payment_intent(%s, 'pi_console_1', %s, 'requires_payment_method')",
                          (booking, CLIENT_SECRET))
    with connect(module_db.url) as su:
        su.execute("INSERT INTO stripe.events (event_id, type, payload, status, attempts, last_error)"
                   " VALUES ('evt_console_dead', 'charge.refunded', %s, 'dead', 8, 'gave up')",
                   (f'{{"secret": "{CLIENT_SECRET}"}}',))
    return {"sku": sku, "inventory": inventory, "booking": booking}


@pytest.fixture(scope="module")
def server(module_db, planted):
    env = {"OPS_TOKEN": TOKEN, "OPS_DATABASE_URL": module_db.ops_url, "METRICS_DB_CACHE_S": "1"}
    with shim(module_db.shim_url, WEBHOOK, extra_env=env) as base:
        yield base


@pytest.fixture(scope="module")
def server_without_token(module_db):
    with shim(module_db.shim_url, WEBHOOK) as base:
        yield base


def assert_unauthorized(resp: httpx.Response):
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["code"] == "unauthorized" and resp.json()["error"]["message"]
    assert resp.headers["www-authenticate"].startswith("Bearer")


# ---------------------------------------------------------------------------------------
# The token rule

@pytest.mark.parametrize("path", ["/ops", "/metrics", "/ops/login"])
def test_both_routes_are_404_while_ops_token_is_unset(server_without_token, path):
    resp = httpx.get(server_without_token + path, headers=BEARER, timeout=10)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "http_404"


@pytest.mark.parametrize("path", ["/ops", "/metrics"])
@pytest.mark.parametrize("header", [
    None, "", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", f"Bearer{TOKEN}", "Bearer",
    f"Bearer {TOKEN.upper()}",
])
def test_a_missing_or_wrong_token_is_401(server, path, header):
    headers = {} if header is None else {"Authorization": header}
    assert_unauthorized(httpx.get(server + path, headers=headers, timeout=10))


@pytest.mark.parametrize("path", ["/ops", "/metrics"])
def test_the_token_opens_both(server, path):
    resp = httpx.get(server + path, headers=BEARER, timeout=30)
    assert resp.status_code == 200, resp.text
    # And a scheme in any case, as RFC 7235 says.
    assert httpx.get(server + path, headers={"Authorization": f"bearer {TOKEN}"}, timeout=30).status_code == 200


@pytest.mark.parametrize("token", ["x" * 31, "é" * 15])
def test_a_token_shorter_than_32_bytes_refuses_to_start(token):
    env = {"DATABASE_URL": "postgresql://127.0.0.1:1/x", "STRIPE_WEBHOOK_SECRET": "whsec_x", "OPS_TOKEN": token}
    with pytest.raises(ConfigError, match="OPS_TOKEN must be at least 32 bytes"):
        Settings.from_env(env)
    proc = subprocess.run(
        [*SHIM_COMMAND, "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=ROOT, env=env_with(**env), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0 and "OPS_TOKEN must be at least 32 bytes" in proc.stderr
    assert token not in proc.stderr
    assert Settings.from_env({**env, "OPS_TOKEN": "y" * 32}).ops_token is not None


# ---------------------------------------------------------------------------------------
# The console

def test_the_console_shows_every_panel_with_the_planted_rows(server, planted, module_db):
    resp = httpx.get(server + "/ops", headers=BEARER, timeout=30)
    page = resp.text
    assert resp.headers["content-type"].startswith("text/html")
    assert "script-src" not in resp.headers["content-security-policy"]  # no script may run
    assert resp.headers["cache-control"] == "no-store"
    for anchor in ("success-metrics", "open-errors", "activity", "holds", "jobs", "cron", "stripe-events",
                   "reconciliation"):
        assert f'id="{anchor}"' in page
    assert planted["sku"] in page and str(planted["inventory"]) in page
    assert '<span class="badge bad">critical</span>' in page
    assert "payments are down &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert "<script" not in page
    assert "evt_console_dead" in page and "booking-sweep-holds" in page and "zombie_holds" in page
    assert page.count("<svg") == 4
    # No secret, no payload, no error detail.
    assert "SENTINEL" not in page
    # Read as the ops login, in a pool of its own.
    users = module_db.rows("SELECT DISTINCT usename FROM pg_stat_activity WHERE application_name = 'pyshim-ops'")
    assert users == [("ops_login",)]


def test_login_gives_a_session_cookie_for_the_console_only(server):
    client = httpx.Client(base_url=server, timeout=30, follow_redirects=False)
    assert client.get("/ops/login").status_code == 200
    assert_unauthorized(client.post("/ops/login", data={"token": TOKEN[:-1]}))
    assert "ops_session" not in client.cookies
    resp = client.post("/ops/login", data={"token": TOKEN})
    assert resp.status_code == 303 and resp.headers["location"] == "/ops"
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ops" in cookie
    assert TOKEN not in cookie
    value = client.cookies["ops_session"]
    assert client.get("/ops").status_code == 200
    # /metrics takes the Bearer header only.
    assert_unauthorized(httpx.get(server + "/metrics", headers={"Cookie": f"ops_session={value}"}, timeout=30))
    expires, _, mac = value.partition(".")
    # One hex digit changed (to another: a MAC that ends in 0 once made "forged" the real one).
    other_last = "1" if mac[-1] == "0" else "0"
    for forged in (f"{expires}.{mac[:-1]}{other_last}", f"{int(expires) + 1}.{mac}", f"{int(time.time()) - 1}.{mac}", "", "x.y"):
        assert_unauthorized(httpx.get(server + "/ops", headers={"Cookie": f"ops_session={forged}"}, timeout=30))


# ---------------------------------------------------------------------------------------
# /metrics

def scrape(server) -> dict:
    resp = httpx.get(server + "/metrics", headers=BEARER, timeout=30)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(resp.text)}


def samples(family, name=None):
    return [s for s in family.samples if name is None or s.name == name]


def test_metrics_are_prometheus_text_with_their_types_and_labels(server):
    bad = httpx.post(server + "/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"}, timeout=10)
    assert bad.status_code == 400
    body = encode(event("test.ping"))
    good = httpx.post(server + "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body, WEBHOOK)},
                      timeout=30)
    assert good.status_code == 200, good.text
    outcome = good.json()["outcome"]
    httpx.get(server + "/no-such-route", timeout=10)
    m = scrape(server)

    requests = m["booking_http_requests"]
    assert requests.type == "counter"
    by_label = {(s.labels["route"], s.labels["status"]): s.value for s in samples(requests, "booking_http_requests_total")}
    assert by_label[("/webhooks/stripe", "400")] >= 1 and by_label[("/webhooks/stripe", "200")] >= 1
    assert by_label[("other", "404")] >= 1  # unknown paths share one series
    assert not any(route == "/no-such-route" for route, _ in by_label)

    latency = m["booking_http_request_duration_seconds"]
    assert latency.type == "histogram"
    counts = {s.labels["route"]: s.value for s in samples(latency, "booking_http_request_duration_seconds_count")}
    assert counts["/webhooks/stripe"] >= 2
    assert any(s.labels.get("le") == "+Inf" for s in samples(latency, "booking_http_request_duration_seconds_bucket"))

    webhooks = {s.labels["outcome"]: s.value for s in samples(m["booking_webhook_deliveries"],
                                                                "booking_webhook_deliveries_total")}
    assert m["booking_webhook_deliveries"].type == "counter"
    assert webhooks["rejected"] >= 1 and webhooks[outcome] >= 1
    batch = m["booking_webhook_batch_size"]
    assert batch.type == "histogram" and samples(batch, "booking_webhook_batch_size_count")[0].value >= 1

    pool = {(s.labels["pool"], s.labels["state"]): s.value for s in samples(m["booking_db_pool_connections"])}
    assert m["booking_db_pool_connections"].type == "gauge"
    assert pool[("shim", "size")] >= 1 and pool[("ops", "size")] >= 1 and ("ops", "requests_waiting") in pool

    for name in ("booking_live_holds", "booking_expired_unswept_holds", "booking_jobs_due", "booking_jobs_dead",
                 "booking_stripe_events_failed", "booking_stripe_events_dead", "booking_open_critical_errors",
                 "booking_db_gauges_ok"):
        assert m[name].type == "gauge", name
    value = {name: m[name].samples[0].value for name in m if not m[name].samples[0].labels}
    assert value["booking_open_critical_errors"] == 1 and value["booking_live_holds"] == 1
    assert value["booking_stripe_events_dead"] == 1 and value["booking_db_gauges_ok"] == 1
    assert value["booking_jobs_due"] >= 1  # the alert for the critical error, not sent (no worker)
    cron = {s.labels["job"]: s.value for s in samples(m["booking_cron_seconds_since_last_run"])}
    assert m["booking_cron_seconds_since_last_run"].type == "gauge"
    assert "booking-sweep-holds" in cron and cron["booking-sweep-holds"] >= 0
    assert {s.labels["job"] for s in samples(m["booking_cron_last_run_failed"])} == set(cron)


def test_the_database_gauges_are_cached_between_scrapes(server, module_db):
    # Wait for a scrape that has just read the database (age near 0; the cache is 1 s here).
    deadline = time.monotonic() + 10
    while True:
        m = scrape(server)
        if m["booking_db_gauges_age_seconds"].samples[0].value <= 0.1:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first = m["booking_open_critical_errors"].samples[0].value
    with connect(module_db.app_url) as app:
        app.execute("SELECT api.log_error('critical', 'console-test', %s)", ("another critical " + uuid.uuid4().hex,))
    again = scrape(server)
    assert again["booking_open_critical_errors"].samples[0].value == first  # served from the cache
    assert again["booking_db_gauges_age_seconds"].samples[0].value > 0
    while scrape(server)["booking_open_critical_errors"].samples[0].value == first:
        assert time.monotonic() < deadline + 10, "the gauges never refreshed"
        time.sleep(0.2)
    assert scrape(server)["booking_open_critical_errors"].samples[0].value == first + 1


def test_metrics_still_answer_when_the_ops_database_is_unreachable(module_db):
    down = f"postgresql://ops_login@127.0.0.1:{free_port()}/nothing?connect_timeout=1"
    env = {"OPS_TOKEN": TOKEN, "OPS_DATABASE_URL": down, "METRICS_DB_CACHE_S": "30"}
    with shim(module_db.shim_url, WEBHOOK, extra_env=env) as base:
        m = scrape(base)  # waits for the pool's timeout once, then answers
        assert m["booking_db_gauges_ok"].samples[0].value == 0
        assert m["booking_db_gauges_age_seconds"].samples[0].value == -1  # never read
        assert m["booking_http_requests"].samples  # the process metrics are still there
        assert scrape(base)["booking_db_gauges_ok"].samples[0].value == 0
        assert httpx.get(base + "/ops", headers=BEARER, timeout=30).status_code == 503
