"""The console in a real browser: Debian's chromium driven by selenium through chromedriver.

Signs in through the login form (a browser cannot send the Bearer header), finds the
planted critical error and an inventory on the page, saves a screenshot (set
CONSOLE_SCREENSHOT=docs/console.png to refresh the committed one), and reads the browser's
console log: no error may be there (no failed load, no blocked script or style)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from tests.pg import connect, database_from_template
from tests.shim.server import free_port, shim
from tests.sql.helpers import new_inventory, place

TOKEN = "browser-ops-token-" + "b" * 32
WEBHOOK = "whsec_console_browser"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (scripts/install-system-deps.sh installs them)",
)


def plant(db) -> dict:
    """A day of activity (for the charts) and something in every panel."""
    with connect(db.app_url) as app:
        inventories = {}
        for sku, capacity, holds in (("concert-2026-12-31-floor", 500, [4, 2, 2, 1]), ("flight-LH123-economy", 180, [1, 3]),
                                     ("museum-late-entry", 60, [])):
            inv = new_inventory(app, capacity=capacity, sku=sku)
            inventories[sku] = inv
            for i, q in enumerate(holds):
                place(app, inv, q, f"holder-{i}")
        app.execute("SELECT api.log_error('critical', 'stripe_webhook', %s)",
                    ("payment_intent.succeeded for booking 7b1f... could not be applied: ledger is locked",))
        app.execute("SELECT api.log_error('error', 'worker', 'e-mail delivery failed: SMTP 451 temporary failure')")
        app.execute("SELECT api.log_error('warning', 'shim', 'slow database answer: 812 ms for api.place_hold')")
    with connect(db.url) as su:
        su.execute("SET session_replication_role = replica")
        inv = inventories["museum-late-entry"]
        su.execute("""
            INSERT INTO booking.holds (inventory_id, bucket_no, quantity, holder, status, created_at, expires_at, ended_at)
            SELECT %s, 0, 1, 'h' || g, 'expired', t, t + interval '15 minutes', t + interval '15 minutes'
            FROM generate_series(1, 1500) AS g,
                 LATERAL (SELECT now() - interval '24 hours' * power(random(), 0.7) AS t WHERE g > 0) AS x""", (inv,))
        su.execute("""
            INSERT INTO booking.bookings (holder, request_fingerprint, status, amount, currency, expires_at, response,
                                          created_at)
            SELECT 'h' || g, 'f', 'confirmed', 2500, 'usd', t + interval '15 minutes', '{}', t
            FROM generate_series(1, 400) AS g, LATERAL (SELECT now() - interval '24 hours' * random() AS t WHERE g > 0) AS x""")
        su.execute("""
            INSERT INTO stripe.events (event_id, type, payload, status, received_at, processed_at)
            SELECT 'evt_day_' || g, 'payment_intent.succeeded', '{}', 'processed', t, t
            FROM generate_series(1, 600) AS g, LATERAL (SELECT now() - interval '24 hours' * random() AS t WHERE g > 0) AS x""")
        su.execute("""
            INSERT INTO stripe.events (event_id, type, payload, status, attempts, last_sqlstate, last_error,
                                       received_at, next_attempt_at)
            VALUES ('evt_1QdeadB00k1ng', 'charge.refunded', '{}', 'dead', 12, 'RB005', 'booking not found',
                    now() - interval '3 hours', NULL),
                   ('evt_1QretryL3dger', 'charge.dispute.created', '{}', 'failed', 3, '40P01', 'deadlock detected',
                    now() - interval '20 minutes', now() + interval '4 minutes')""")
        fp = su.execute("SELECT fingerprint FROM core.error_groups WHERE severity = 'warning'").fetchone()[0]
        su.execute("""
            INSERT INTO core.errors (fingerprint, severity, source, message, at)
            SELECT %s, 'warning', 'shim', 'slow database answer', now() - interval '24 hours' * random()
            FROM generate_series(1, 120)""", (fp,))
        su.execute("UPDATE core.error_groups SET count = 121, first_seen = now() - interval '23 hours'"
                   " WHERE fingerprint = %s", (fp,))
        su.execute("""
            INSERT INTO core.cron_runs (jobname, last_started_at, last_finished_at, last_status, runs, failures,
                                        last_error)
            VALUES ('booking-sweep-holds', now() - interval '40 seconds', now() - interval '39 seconds', 'ok', 1440, 0, NULL),
                   ('booking-retry-stripe-events', now() - interval '14 minutes', now() - interval '14 minutes',
                    'failed', 1300, 2, 'canceling statement due to statement timeout')""")
        run = su.execute("INSERT INTO core.reconciliation_runs (window_start, window_end, checked, mismatches)"
                         " VALUES (now() - interval '2 days', now() - interval '1 day', 812, 1) RETURNING run_id"
                         ).fetchone()[0]
        su.execute("INSERT INTO core.reconciliation_mismatches (run_id, problem, kind, stripe_object_id,"
                   " stripe_amount, ledger_amount, currency) VALUES (%s, 'missing_in_ledger', 'refund',"
                   " 're_3QxMissing', 2500, NULL, 'usd')", (run,))
    return inventories


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, port=free_port(), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]


def test_the_console_in_chromium(migrated, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    with database_from_template(migrated) as db:
        inventories = plant(db)
        env = {"OPS_TOKEN": TOKEN, "OPS_DATABASE_URL": db.ops_url}
        with shim(db.shim_url, WEBHOOK, extra_env=env) as base:
            # Without a session the console is refused (401 JSON).
            browser.get(base + "/ops")
            assert "unauthorized" in browser.page_source
            browser.get_log("browser")  # that 401 is logged as a failed load: expected, cleared
            browser.get(base + "/ops/login")
            browser.find_element(By.NAME, "token").send_keys(TOKEN)
            browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            # click() returns once the form is sent, not once the redirect has loaded: on a
            # loaded machine current_url was still /ops/login. Wait for it (30 s at most).
            WebDriverWait(browser, 30).until(expected_conditions.url_to_be(base + "/ops"))
            assert browser.current_url == base + "/ops"
            assert browser.find_element(By.TAG_NAME, "h1").text == "booking-core on-call console"
            errors = browser.find_element(By.ID, "open-errors")
            critical = errors.find_elements(By.CSS_SELECTOR, "tbody tr")[0]
            assert critical.find_element(By.CSS_SELECTOR, ".badge").text == "critical"
            assert "ledger is locked" in critical.text
            holds = browser.find_element(By.ID, "holds").text
            assert "concert-2026-12-31-floor" in holds and str(inventories["flight-LH123-economy"]) in holds
            assert len(browser.find_elements(By.CSS_SELECTOR, "#activity svg")) == 4
            assert "evt_1QdeadB00k1ng" in browser.find_element(By.ID, "stripe-events").text
            height = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]["height"]
            browser.set_window_size(1400, int(height) + 160)
            shot = Path(os.environ.get("CONSOLE_SCREENSHOT") or tmp_path / "console.png")
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
            assert console_errors(browser) == []
            # Signing out is closing the browser: the cookie is for /ops only, HttpOnly.
            cookie = browser.get_cookie("ops_session")
            assert cookie["httpOnly"] and cookie["path"] == "/ops" and cookie["sameSite"] == "Strict"
            assert TOKEN not in cookie["value"]
            assert uuid.UUID(str(inventories["museum-late-entry"]))
