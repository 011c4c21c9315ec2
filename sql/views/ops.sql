-- What a DBA or on-call engineer reads in psql (granted to booking_ops).

CREATE OR REPLACE VIEW ops.stripe_events AS
SELECT
    e.event_id,
    e.type,
    e.status,
    e.attempts,
    e.last_error,
    e.received_at,
    e.processed_at,
    e.next_attempt_at,
    e.last_sqlstate,
    e.livemode,
    e.correlation_id
FROM stripe.events AS e;
COMMENT ON VIEW ops.stripe_events IS 'Every Stripe event received, newest last by received_at.';

CREATE OR REPLACE VIEW ops.stripe_events_dead AS
SELECT *
FROM ops.stripe_events
WHERE status = 'dead';
COMMENT ON VIEW ops.stripe_events_dead IS 'Stripe events that ran out of retries; replay with ops.replay_stripe_event.';

CREATE OR REPLACE VIEW ops.cron_jobs AS
SELECT
    c.jobname,
    c.schedule,
    c.description,
    c.job_function,
    c.max_silence,
    r.last_started_at,
    r.last_finished_at,
    r.last_status,
    r.last_error,
    r.last_result,
    coalesce(r.runs, 0) AS runs,
    coalesce(r.failures, 0) AS failures
FROM core.cron_jobs AS c
LEFT JOIN core.cron_runs AS r ON c.jobname = r.jobname;
COMMENT ON VIEW ops.cron_jobs IS 'Each scheduled job and its last run, as recorded by core.run_cron_job.';

CREATE OR REPLACE VIEW ops.holds_overview AS
SELECT
    i.inventory_id,
    i.sku,
    i.capacity,
    b.sold,
    h.live_held,
    h.expired_unswept,
    h.next_deadline,
    b.free + h.expired_unswept AS available,
    b.free AS bucket_free,
    i.bucket_count
FROM booking.inventory AS i
CROSS JOIN LATERAL (
    SELECT
        sum(x.sold)::int AS sold,
        sum(x.free)::int AS free
    FROM booking.inventory_buckets AS x
    WHERE x.inventory_id = i.inventory_id
) AS b
CROSS JOIN LATERAL (
    SELECT
        coalesce(sum(o.quantity) FILTER (WHERE o.expires_at > clock_timestamp()), 0)::int AS live_held,
        coalesce(sum(o.quantity) FILTER (WHERE o.expires_at <= clock_timestamp()), 0)::int AS expired_unswept,
        min(o.expires_at) FILTER (WHERE o.expires_at > clock_timestamp()) AS next_deadline
    FROM booking.holds AS o
    WHERE o.inventory_id = i.inventory_id AND o.status IN ('live', 'booked')
) AS h;
COMMENT ON VIEW ops.holds_overview IS
'Per inventory: capacity, sold, units in holds before their deadline, units in dead holds not yet swept, the next deadline.';

-- Always empty. A row means an invariant broke: more sold and held than the capacity, or
-- the buckets and holds do not add up to the capacity.
CREATE OR REPLACE VIEW ops.oversold_inventory AS
SELECT
    inventory_id,
    sku,
    capacity,
    sold,
    live_held,
    expired_unswept,
    bucket_free,
    sold + live_held - capacity AS oversold_by,
    bucket_free + sold + live_held + expired_unswept - capacity AS unaccounted
FROM ops.holds_overview
WHERE
    sold + live_held > capacity
    OR bucket_free + sold + live_held + expired_unswept != capacity;
COMMENT ON VIEW ops.oversold_inventory IS
'Always empty: inventories sold or held beyond capacity, or whose units do not add up.';
