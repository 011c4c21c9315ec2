-- The worker's role (booking_worker) may not read bookings any more (CONTRACT.md, Roles):
-- an email.booking_confirmed job now carries its message (holder, amount, currency, items),
-- written when the booking is confirmed (booking.confirmation_message). Jobs queued by an
-- earlier release carry only the booking id: give them their message here, as the trigger
-- would have, so an upgrade loses no e-mail. Finished jobs keep their payload as it was.
UPDATE jobs.jobs AS j
SET payload = j.payload || jsonb_build_object(
    'holder', b.holder, 'amount', b.amount, 'currency', b.currency,
    'items', coalesce((
        SELECT jsonb_agg(jsonb_build_object('sku', i.sku, 'quantity', h.quantity) ORDER BY h.created_at, h.hold_id)
        FROM booking.holds AS h
        INNER JOIN booking.inventory AS i ON h.inventory_id = i.inventory_id
        WHERE h.booking_id = b.booking_id AND h.status = 'converted'
    ), '[]'::jsonb)
)
FROM booking.bookings AS b
WHERE
    j.kind = 'email.booking_confirmed'
    AND j.status IN ('queued', 'running', 'failed')
    AND NOT j.payload ? 'holder'
    AND b.booking_id = (j.payload ->> 'booking_id')::uuid;
