"""Chaos: thousands of signed deliveries through the shim, with duplicates, events out of
order and concurrent copies, mixing payments, failures, cancellations, refunds, disputes
and late payments. At the end every booking and every ledger total must equal what the
final Stripe objects say, no Stripe object is booked twice, and nothing waits."""

from __future__ import annotations

import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.pg import connect, database_from_template
from tests.shim.server import shim
from tests.sql.helpers import wait_past
from tests.stripe_events import dispute, encode, event, payment_intent, refund, sign

SECRET = "whsec_chaos_0123456789abcdef"
SCENARIOS = ["paid", "paid_via_checkout", "failed_then_paid", "partial_refund", "full_refund_in_two",
             "dispute_won", "dispute_lost", "canceled", "late_with_units", "late_without_units"]


@pytest.fixture(scope="module")
def chaos_db(migrated):
    with database_from_template(migrated) as database:
        yield database


def make_booking(conn, scenario, rng):
    late = scenario.startswith("late")
    quantity = rng.randint(1, 3)
    capacity = quantity if scenario == "late_without_units" else 20
    inventory = conn.execute("SELECT api.create_inventory(%s, %s, %s, 'usd', %s::interval)",
                             (f"chaos-{uuid.uuid4().hex[:10]}", capacity, rng.choice([1500, 2500, 9900]),
                              "2 seconds" if late else "15 minutes")).fetchone()[0]
    hold = conn.execute("SELECT hold_id FROM api.place_hold(%s, %s, 'chaos')", (inventory, quantity)).fetchone()[0]
    answer = conn.execute("SELECT api.create_booking(%s, 'chaos', ARRAY[%s::uuid])",
                          (uuid.uuid4().hex, hold)).fetchone()[0]
    return inventory, quantity, answer["booking_id"], answer["amount"]


def story(scenario, booking_id, amount):
    """The Stripe events of one booking in the order Stripe would send them, and what the
    final Stripe objects say: (events, expected status, paid, refunded, disputed)."""
    pi = "pi_" + uuid.uuid4().hex[:16]
    ok = event("payment_intent.succeeded", payment_intent(pi, booking_id, amount))
    if scenario == "canceled":
        return [event("payment_intent.canceled", payment_intent(pi, booking_id, amount, status="canceled"))], \
            "cancelled", 0, 0, 0
    if scenario == "paid":
        return [ok], "confirmed", amount, 0, 0
    if scenario == "paid_via_checkout":
        session = event("checkout.session.completed", {
            "id": "cs_" + uuid.uuid4().hex[:12], "object": "checkout.session", "payment_status": "paid",
            "payment_intent": pi, "amount_total": amount, "currency": "usd",
            "metadata": {"booking_id": str(booking_id)}})
        return [session, ok], "confirmed", amount, 0, 0
    if scenario == "failed_then_paid":
        failed = event("payment_intent.payment_failed",
                       payment_intent(pi, booking_id, amount, status="requires_payment_method"))
        return [failed, ok], "confirmed", amount, 0, 0
    if scenario == "partial_refund":
        return [ok, event("refund.created", refund("re_" + uuid.uuid4().hex[:12], pi, amount // 3))], \
            "partially_refunded", amount, amount // 3, 0
    if scenario == "full_refund_in_two":
        r1, r2 = refund("re_" + uuid.uuid4().hex[:12], pi, amount // 2), refund("re_" + uuid.uuid4().hex[:12], pi, amount - amount // 2)
        charge = {"id": "ch_" + uuid.uuid4().hex[:12], "object": "charge", "payment_intent": pi,
                  "refunds": {"data": [r1, r2]}}
        return [ok, event("refund.updated", r1), event("charge.refunded", charge)], "refunded", amount, amount, 0
    if scenario in ("dispute_won", "dispute_lost"):
        dp = "dp_" + uuid.uuid4().hex[:12]
        outcome = scenario.split("_")[1]
        return [ok, event("charge.dispute.created", dispute(dp, pi, amount)),
                event("charge.dispute.closed", dispute(dp, pi, amount, status=outcome))], \
            "confirmed" if outcome == "won" else "refunded", amount, 0, 0 if outcome == "won" else amount
    if scenario == "late_with_units":
        return [ok], "confirmed", amount, 0, 0
    if scenario == "late_without_units":
        # No units left: the money is kept apart and refunded.
        return [ok, event("refund.created", refund("re_" + uuid.uuid4().hex[:12], pi, amount))], \
            "refunded", amount, amount, 0
    raise AssertionError(scenario)


@pytest.mark.slow
def test_chaos_deliveries_end_in_the_state_stripe_says(chaos_db, tmp_path):
    rng = random.Random(20261122)
    bookings = {}
    with connect(chaos_db.app_url) as conn:
        while sum(len(b["events"]) for b in bookings.values()) * 1.3 < 2100:
            scenario = rng.choice(SCENARIOS)
            inventory, quantity, booking_id, amount = make_booking(conn, scenario, rng)
            events, status, paid, refunded, disputed = story(scenario, booking_id, amount)
            bookings[booking_id] = dict(scenario=scenario, inventory=inventory, quantity=quantity, events=events,
                                        status=status, paid=paid, refunded=refunded, disputed=disputed)
        # By the database's clock, until the late ones (2 s holds; the others have 15 min)
        # are past their deadline.
        wait_past(conn, chaos_db.one(
            "SELECT max(expires_at) FROM booking.bookings WHERE expires_at < now() + interval '1 minute'"))
        for b in bookings.values():
            if b["scenario"] == "late_without_units":  # someone else takes the units meanwhile
                conn.execute("SELECT api.place_hold(%s, %s, 'someone-else')", (b["inventory"], b["quantity"]))

    # Deliveries: every event once, 30% duplicated, 20% moved out of order, 5% sent as two
    # concurrent copies.
    deliveries = [[e] for b in bookings.values() for e in b["events"]]
    rng.shuffle(deliveries)  # bookings interleave
    for e in [d[0] for d in deliveries]:
        if rng.random() < 0.30:
            deliveries.insert(rng.randrange(len(deliveries) + 1), [e])
    for _ in range(int(len(deliveries) * 0.20)):
        i, j = rng.randrange(len(deliveries)), rng.randrange(len(deliveries))
        deliveries[i], deliveries[j] = deliveries[j], deliveries[i]
    for d in deliveries:
        if rng.random() < 0.05:
            d.append(d[0])
    total = sum(len(d) for d in deliveries)
    assert total >= 2000

    statuses = []
    lock = threading.Lock()
    # Two transactions of events at a time: deliveries that arrive while both are busy go
    # together (group commit), and the copies still race in separate transactions.
    with shim(chaos_db.shim_url, SECRET, extra_env={"WEBHOOK_BATCH_CONCURRENCY": "2"}, log=tmp_path / "shim.log") as base:
        def deliver(evt):
            body = encode(evt)
            with httpx.Client(timeout=60) as client:
                resp = client.post(base + "/webhooks/stripe", content=body, headers={"Stripe-Signature": sign(body, SECRET)})
            with lock:
                statuses.append(resp.status_code)

        def deliver_group(group):
            if len(group) == 1:
                deliver(group[0])
                return
            threads = [threading.Thread(target=deliver, args=(e,)) for e in group]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(deliver_group, deliveries))
    assert statuses.count(200) == total, {s: statuses.count(s) for s in set(statuses)}
    # Rows written by one transaction share its xmin: some events went in together.
    stored, transactions = chaos_db.rows("SELECT count(*), count(DISTINCT xmin::text) FROM stripe.events")[0]
    assert transactions < stored, (stored, transactions)

    # What waits for something delivered later is retried by the cron job's function.
    with connect(chaos_db.url) as conn:
        for _ in range(10):
            waiting = conn.execute("SELECT count(*) FROM stripe.events WHERE status IN ('deferred', 'failed')").fetchone()[0]
            if not waiting:
                break
            conn.execute("UPDATE stripe.events SET next_attempt_at = now() WHERE status IN ('deferred', 'failed')")
            conn.execute("SELECT core.run_cron_job('booking-retry-stripe-events')")
    assert chaos_db.rows("SELECT status, count(*) FROM stripe.events WHERE status NOT IN ('processed', 'ignored') "
                         "GROUP BY 1") == []

    actual = {str(b): s for b, s in chaos_db.rows("SELECT booking_id, status FROM booking.bookings")}
    ledger = {str(r[0]): r[1:] for r in chaos_db.rows(
        "SELECT booking_id, paid, refunded, disputed FROM ops.booking_ledger")}
    wrong = []
    for booking_id, b in bookings.items():
        got_ledger = ledger.get(str(booking_id), (0, 0, 0))
        if actual[str(booking_id)] != b["status"] or tuple(got_ledger) != (b["paid"], b["refunded"], b["disputed"]):
            wrong.append((b["scenario"], b["status"], actual[str(booking_id)], (b["paid"], b["refunded"], b["disputed"]),
                          got_ledger))
    assert wrong == []
    # Each Stripe object booked once: as many ledger transactions as objects that moved money.
    objects = sum((1 if b["paid"] else 0) + {"partial_refund": 1, "full_refund_in_two": 2, "late_without_units": 1,
                                             "dispute_won": 2, "dispute_lost": 1}.get(b["scenario"], 0)
                  for b in bookings.values())
    assert chaos_db.one("SELECT count(*) FROM ledger.transactions") == objects
    assert chaos_db.rows("SELECT * FROM ops.ledger_imbalances") == []
    assert chaos_db.rows("SELECT * FROM ops.oversold_inventory") == []
    assert chaos_db.rows("SELECT * FROM ops.broken_rows") == []
    assert chaos_db.one("SELECT count(*) FROM stripe.events") == len({e["id"] for b in bookings.values() for e in b["events"]})
    print(f"\nchaos: {len(bookings)} bookings, {total} deliveries, {objects} ledger transactions")
