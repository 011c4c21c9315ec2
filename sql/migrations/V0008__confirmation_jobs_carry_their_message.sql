-- The worker's role (booking_worker) may not read bookings any more (CONTRACT.md, Roles):
-- an email.booking_confirmed job now carries its message (holder, amount, currency, items),
-- written when the booking is confirmed (booking.confirmation_message). Jobs queued by an
-- earlier release carry only the booking id: give them their message here, as the trigger
-- would have, so an upgrade loses no e-mail. Finished jobs keep their payload as it was.
-- Row locks only (ROW EXCLUSIVE on jobs.jobs): buyers and the worker are not blocked.
WITH message AS (
    SELECT
        j.job_id,
        jsonb_build_object(
            'holder', b.holder, 'amount', b.amount, 'currency', b.currency,
            'items', coalesce(items.items, '[]'::jsonb)
        ) AS fields
    FROM jobs.jobs AS j
    INNER JOIN booking.bookings AS b ON (j.payload ->> 'booking_id')::uuid = b.booking_id
    LEFT JOIN LATERAL (
        SELECT jsonb_agg(jsonb_build_object('sku', i.sku, 'quantity', h.quantity) ORDER BY h.created_at, h.hold_id)
            AS items
        FROM booking.holds AS h
        INNER JOIN booking.inventory AS i ON h.inventory_id = i.inventory_id
        WHERE h.booking_id = b.booking_id AND h.status = 'converted'
    ) AS items ON true
    WHERE
        j.kind = 'email.booking_confirmed'
        AND j.status IN ('queued', 'running', 'failed')
        AND NOT j.payload ? 'holder'
)

UPDATE jobs.jobs AS j
SET payload = j.payload || m.fields
FROM message AS m
WHERE j.job_id = m.job_id;
