"""Chaos deliveries shared by the chaos test, the failover test and the failover bench:
bookings in ten Stripe scenarios (payments, failures, cancellations, refunds, disputes,
late payments), their events with 30% duplicates, 20% moved out of order and 5% sent as
two concurrent copies, and the check that the database ends as the final Stripe objects say."""

from __future__ import annotations

import threading

import random
import uuid

from tests.sql.helpers import wait_past
from tests.stripe_events import dispute, event, payment_intent, refund

SCENARIOS = ["paid", "paid_via_checkout", "failed_then_paid", "partial_refund", "full_refund_in_two",
             "dispute_won", "dispute_lost", "canceled", "late_with_units", "late_without_units"]
# Stripe objects that move money, beyond the payment, per scenario (each one ledger transaction).
EXTRA_OBJECTS = {"partial_refund": 1, "full_refund_in_two": 2, "late_without_units": 1, "dispute_won": 2,
                 "dispute_lost": 1}


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


def make_bookings(app_conn, admin_conn, rng: random.Random, deliveries_target: int) -> dict:
    """Bookings (by id) whose events, with the duplicates and copies added by deliveries(),
    come to about deliveries_target; returns when the late ones are past their deadline and
    the units of those that must find none are taken by someone else."""
    bookings = {}
    while sum(len(b["events"]) for b in bookings.values()) * 1.3 < deliveries_target:
        scenario = rng.choice(SCENARIOS)
        inventory, quantity, booking_id, amount = make_booking(app_conn, scenario, rng)
        events, status, paid, refunded, disputed = story(scenario, booking_id, amount)
        bookings[booking_id] = dict(scenario=scenario, inventory=inventory, quantity=quantity, events=events,
                                    status=status, paid=paid, refunded=refunded, disputed=disputed)
    # By the database's clock, until the late ones (2 s holds; the others have 15 min)
    # are past their deadline.
    wait_past(app_conn, admin_conn.execute(
        "SELECT max(expires_at) FROM booking.bookings WHERE expires_at < now() + interval '1 minute'").fetchone()[0])
    for b in bookings.values():
        if b["scenario"] == "late_without_units":  # someone else takes the units meanwhile
            app_conn.execute("SELECT api.place_hold(%s, %s, 'someone-else')", (b["inventory"], b["quantity"]))
    return bookings


def deliveries(bookings: dict, rng: random.Random) -> list[list[dict]]:
    """Every event once, 30% duplicated, 20% moved out of order, 5% sent as two concurrent
    copies; each item is a group of copies to send at the same moment."""
    out = [[e] for b in bookings.values() for e in b["events"]]
    rng.shuffle(out)  # bookings interleave
    for e in [d[0] for d in out]:
        if rng.random() < 0.30:
            out.insert(rng.randrange(len(out) + 1), [e])
    for _ in range(int(len(out) * 0.20)):
        i, j = rng.randrange(len(out)), rng.randrange(len(out))
        out[i], out[j] = out[j], out[i]
    for d in out:
        if rng.random() < 0.05:
            d.append(d[0])
    return out


def expected_ledger_transactions(bookings: dict) -> int:
    """As many ledger transactions as Stripe objects that moved money."""
    return sum((1 if b["paid"] else 0) + EXTRA_OBJECTS.get(b["scenario"], 0) for b in bookings.values())


def drain_retries(admin_conn, rounds: int = 10) -> None:
    """What waits for something delivered later is retried by the cron job's function."""
    for _ in range(rounds):
        waiting = admin_conn.execute(
            "SELECT count(*) FROM stripe.events WHERE status IN ('deferred', 'failed')").fetchone()[0]
        if not waiting:
            return
        admin_conn.execute("UPDATE stripe.events SET next_attempt_at = now() WHERE status IN ('deferred', 'failed')")
        admin_conn.execute("SELECT core.run_cron_job('booking-retry-stripe-events')")


def wrong_bookings(admin_conn, bookings: dict) -> list[tuple]:
    """Bookings whose status or ledger totals differ from what the final Stripe objects say."""
    actual = {str(b): s for b, s in admin_conn.execute("SELECT booking_id, status FROM booking.bookings").fetchall()}
    ledger = {str(r[0]): r[1:] for r in admin_conn.execute(
        "SELECT booking_id, paid, refunded, disputed FROM ops.booking_ledger").fetchall()}
    wrong = []
    for booking_id, b in bookings.items():
        got_ledger = ledger.get(str(booking_id), (0, 0, 0))
        if actual.get(str(booking_id)) != b["status"] or tuple(got_ledger) != (b["paid"], b["refunded"], b["disputed"]):
            wrong.append((b["scenario"], b["status"], actual.get(str(booking_id)),
                          (b["paid"], b["refunded"], b["disputed"]), got_ledger))
    return wrong


def broken_invariants(admin_conn) -> dict[str, list]:
    """The ops views that must stay empty, with their rows when they are not."""
    found = {}
    for view in ("ops.ledger_imbalances", "ops.oversold_inventory", "ops.broken_rows"):
        rows = admin_conn.execute(f"SELECT * FROM {view}").fetchall()
        if rows:
            found[view] = rows
    return found


def send_group(deliver, group) -> None:
    """Sends one planned group of deliveries: a single one as it is, concurrent copies of
    one event each from its own thread at once."""
    if len(group) == 1:
        deliver(group[0])
        return
    threads = [threading.Thread(target=deliver, args=(e,)) for e in group]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
