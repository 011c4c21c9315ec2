"""Chaos: thousands of signed deliveries through the shim, with duplicates, events out of
order and concurrent copies, mixing payments, failures, cancellations, refunds, disputes
and late payments. At the end every booking and every ledger total must equal what the
final Stripe objects say, no Stripe object is booked twice, and nothing waits."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.chaos import (
    broken_invariants, deliveries as chaos_deliveries, drain_retries, expected_ledger_transactions, make_bookings,
    send_group, wrong_bookings,
)
from tests.pg import connect
from tests.shim.server import shim
from tests.stripe_events import encode, sign

SECRET = "whsec_chaos_0123456789abcdef"


@pytest.mark.slow
def test_chaos_deliveries_end_in_the_state_stripe_says(module_db, tmp_path):
    rng = random.Random(20261122)
    with connect(module_db.app_url) as conn, connect(module_db.url) as admin:
        bookings = make_bookings(conn, admin, rng, 2100)
    deliveries = chaos_deliveries(bookings, rng)
    total = sum(len(d) for d in deliveries)
    assert total >= 2000

    statuses = []
    lock = threading.Lock()
    # Two transactions of events at a time: deliveries that arrive while both are busy go
    # together (group commit), and the copies still race in separate transactions.
    with shim(module_db.shim_url, SECRET, extra_env={"WEBHOOK_BATCH_CONCURRENCY": "2"}, log=tmp_path / "shim.log") as base:
        def deliver(evt):
            body = encode(evt)
            with httpx.Client(timeout=60) as client:
                resp = client.post(base + "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body, SECRET)})
            with lock:
                statuses.append(resp.status_code)

        def deliver_group(group):
            send_group(deliver, group)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(deliver_group, deliveries))
    assert statuses.count(200) == total, {s: statuses.count(s) for s in set(statuses)}
    # Rows written by one transaction share its xmin: some events went in together.
    stored, transactions = module_db.rows("SELECT count(*), count(DISTINCT xmin::text) FROM stripe.events")[0]
    assert transactions < stored, (stored, transactions)

    with connect(module_db.url) as admin:
        drain_retries(admin)
        assert module_db.rows("SELECT status, count(*) FROM stripe.events WHERE status NOT IN ('processed', 'ignored') "
                             "GROUP BY 1") == []
        assert wrong_bookings(admin, bookings) == []
        # Each Stripe object booked once: as many ledger transactions as objects that moved money.
        objects = expected_ledger_transactions(bookings)
        assert module_db.one("SELECT count(*) FROM ledger.transactions") == objects
        assert broken_invariants(admin) == {}
    assert module_db.one("SELECT count(*) FROM stripe.events") == len({e["id"] for b in bookings.values() for e in b["events"]})
    print(f"\nchaos: {len(bookings)} bookings, {total} deliveries, {objects} ledger transactions")
