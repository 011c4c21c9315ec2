-- The ledger's read API: what each payment brought in and what went back, as every reader
-- needs it (stripe.on_refund, api.refunds_due, api.get_booking, ops.booking_ledger). A
-- reader of one booking filters on booking_id, which the planner pushes under the GROUP BY
-- (ledger.transactions_booking_idx).

CREATE OR REPLACE VIEW ledger.payment_totals AS
SELECT
    t.booking_id,
    t.payment_intent_id,
    t.currency,
    coalesce(sum(t.amount) FILTER (WHERE t.kind = 'charge'), 0)::bigint AS paid,
    coalesce(sum(t.amount) FILTER (WHERE t.kind = 'refund'), 0)::bigint AS refunded,
    (coalesce(sum(t.amount) FILTER (WHERE t.kind = 'dispute'), 0)
    - coalesce(sum(t.amount) FILTER (WHERE t.kind = 'dispute_reversal'), 0))::bigint AS disputed,
    ledger.charge_is_unallocated(t.payment_intent_id) AS unallocated
FROM ledger.transactions AS t
GROUP BY t.booking_id, t.payment_intent_id, t.currency;
COMMENT ON VIEW ledger.payment_totals IS
'Per booking and PaymentIntent: paid (charged), refunded, disputed (open or lost), and whether the charge is money no booking keeps (unallocated; NULL before the charge is booked).';
