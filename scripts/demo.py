"""make demo: the whole payment flow, printed step by step, against the embedded cluster
(started if needed), localstripe and a shim on 127.0.0.1, all started here.

    .venv/bin/python scripts/demo.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import stripe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.shim.server import free_port, shim  # noqa: E402

SECRET = "whsec_demo_" + uuid.uuid4().hex
API_KEY = "sk_test_demo"


def step(title: str, detail: object = None) -> None:
    print(f"\n== {title}")
    if detail is not None:
        print(json.dumps(detail, indent=2, default=str) if not isinstance(detail, str) else detail)


def main() -> None:
    subprocess.run([str(ROOT / "scripts/cluster.sh"), "start"], check=True)
    admin = subprocess.run([str(ROOT / "scripts/cluster.sh"), "url"], capture_output=True, text=True,
                           check=True).stdout.strip()
    subprocess.run([str(ROOT / "sql/migrate.sh"), admin], check=True)
    # The logins of `make run`: one per duty, each holding only its role.
    with psycopg.connect(admin, autocommit=True) as conn:
        for login, role in (("shim_login", "booking_shim"), ("app_login", "booking_app")):
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login,)).fetchone():
                conn.execute(f"CREATE ROLE {login} LOGIN")
            conn.execute(f"GRANT {role} TO {login}")
    shim_url = admin.replace("postgres@", "shim_login@")
    app_url = admin.replace("postgres@", "app_login@")

    port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "tests.localstripe_server", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stripe_base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(stripe_base + "/v1/customers", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        with shim(shim_url, SECRET, extra_env={"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": stripe_base}) as base:
            step("localstripe (a fake Stripe) and the shim are up", f"Stripe API {stripe_base}, shim {base}")
            httpx.post(f"{stripe_base}/_config/webhooks/demo", data={
                "url": base + "/webhooks/stripe", "secret": SECRET,
                "events[]": ["payment_intent.succeeded", "payment_intent.payment_failed"]}).raise_for_status()
            with psycopg.connect(app_url, autocommit=True) as app:
                sku = f"demo-concert-{uuid.uuid4().hex[:6]}"
                inventory = app.execute("SELECT api.create_inventory(%s, 100, 4500, 'usd')", (sku,)).fetchone()[0]
                step("1. api.create_inventory: 100 seats at 45.00 usd", {"inventory_id": inventory})
                hold, expires = app.execute("SELECT * FROM api.place_hold(%s, 2, 'alice@example.com')",
                                            (inventory,)).fetchone()
                step("2. api.place_hold: 2 seats for 15 minutes", {"hold_id": hold, "expires_at": expires})
                booking = app.execute("SELECT api.create_booking(%s, 'alice@example.com', ARRAY[%s::uuid])",
                                      (uuid.uuid4().hex, hold)).fetchone()[0]
                step("3. api.create_booking", booking)
            resp = httpx.post(base + "/payment-intents", json={"booking_id": booking["booking_id"]},
                              headers={"Idempotency-Key": "demo-" + uuid.uuid4().hex}, timeout=30)
            intent = resp.json()
            step(f"4. POST /payment-intents -> {resp.status_code}", intent)
            client = stripe.StripeClient(API_KEY, base_addresses={"api": stripe_base}, max_network_retries=0)
            method = client.v1.payment_methods.create(params={
                "type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
            client.v1.payment_intents.update(intent["payment_intent_id"], params={"payment_method": method.id})
            client.v1.payment_intents.confirm(intent["payment_intent_id"])
            step("5. the browser confirms with test card 4242 4242 4242 4242; Stripe will send "
                 "payment_intent.succeeded to POST /webhooks/stripe")
            with psycopg.connect(admin, autocommit=True) as ops:
                for _ in range(100):
                    status = ops.execute("SELECT status FROM booking.bookings WHERE booking_id = %s",
                                         (booking["booking_id"],)).fetchone()[0]
                    if status == "confirmed":
                        break
                    time.sleep(0.2)
                got = ops.execute("SELECT api.get_booking(%s)", (booking["booking_id"],)).fetchone()[0]
                step("6. api.get_booking after the webhook", got)
                step("7. the ledger (ops.ledger_balances)",
                     [dict(account=a, currency=c, balance=b) for a, c, b in
                      ops.execute("SELECT account, currency, balance FROM ops.ledger_balances ORDER BY 1")])
                step("8. the outbox (ops.jobs_overview)",
                     [dict(kind=k, status=s, count=n) for k, s, n, _ in ops.execute("TABLE ops.jobs_overview")])
                step("9. the events received (ops.stripe_events)",
                     [dict(event_id=e, type=t, status=s) for e, t, s in ops.execute(
                         "SELECT event_id, type, status FROM ops.stripe_events ORDER BY received_at DESC LIMIT 3")])
            step("Look around yourself", f'psql "{admin}"\n  TABLE ops.holds_overview; TABLE ops.booking_history; '
                 'TABLE ops.ledger_balances; SELECT jsonb_pretty(api.health());')
    finally:
        fake.terminate()
        fake.wait(timeout=10)


if __name__ == "__main__":
    main()
