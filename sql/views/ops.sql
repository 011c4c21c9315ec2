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
    i.bucket_count,
    coalesce(w.owed, 0) AS waitlist_owed
FROM booking.inventory AS i
LEFT JOIN booking.waitlists AS w ON i.inventory_id = w.inventory_id
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
    bucket_free + sold + live_held + expired_unswept + waitlist_owed - capacity AS unaccounted,
    waitlist_owed
FROM ops.holds_overview
WHERE
    sold + live_held > capacity
    -- Units owed to a waitlist are in no bucket and no hold (migrations/V0014).
    OR bucket_free + sold + live_held + expired_unswept + waitlist_owed != capacity;
COMMENT ON VIEW ops.oversold_inventory IS
'Always empty: inventories sold or held beyond capacity, or whose units do not add up.';

-- Always empty. The rules that tie two columns of a row together, kept here rather than
-- as table CHECKs (see migrations/V0007): PostgreSQL re-plans a table's CHECKs at every
-- statement that writes it, and on booking.holds that cost 13% of api.place_hold.
CREATE OR REPLACE VIEW ops.broken_rows AS
SELECT 'booking.holds' AS table_name, h.hold_id::text AS row_id,
       'an open hold has no ended_at, an ended one has one' AS rule
FROM booking.holds AS h
WHERE (h.status IN ('live', 'booked')) IS DISTINCT FROM (h.ended_at IS NULL)
UNION ALL
SELECT 'booking.holds' AS table_name, h.hold_id::text AS row_id, 'a booked hold names its booking' AS rule
FROM booking.holds AS h
WHERE h.status = 'booked' AND h.booking_id IS NULL
UNION ALL
SELECT
    'stripe.events' AS table_name, e.event_id AS row_id,
    'an event waiting for a retry (deferred, failed) has a retry time, no other has' AS rule
FROM stripe.events AS e
WHERE (e.status IN ('deferred', 'failed')) IS DISTINCT FROM (e.next_attempt_at IS NOT NULL)
UNION ALL
SELECT
    'booking.waitlist_entries' AS table_name, e.entry_id::text AS row_id,
    'an offered entry names its hold, a waiting one none' AS rule
FROM booking.waitlist_entries AS e
WHERE (e.status = 'offered' AND e.hold_id IS NULL) OR (e.status = 'waiting' AND e.hold_id IS NOT NULL)
UNION ALL
SELECT
    'booking.waitlists' AS table_name, w.inventory_id::text AS row_id,
    'the waiting counter equals the entries waiting' AS rule
FROM booking.waitlists AS w
WHERE w.waiting != (
    SELECT count(*) FROM booking.waitlist_entries AS e
    WHERE e.inventory_id = w.inventory_id AND e.status = 'waiting'
);
COMMENT ON VIEW ops.broken_rows IS
'Always empty: rows breaking a rule between two of their columns (holds: open vs ended_at, booked vs booking_id; Stripe events: waiting vs retry time).';

CREATE OR REPLACE VIEW ops.booking_transitions AS
SELECT
    from_status,
    event,
    to_status
FROM booking.booking_transitions
ORDER BY from_status, event;
COMMENT ON VIEW ops.booking_transitions IS 'The booking state machine: every allowed (from_status, event, to_status).';

CREATE OR REPLACE VIEW ops.bookings AS
SELECT
    b.booking_id,
    b.holder,
    b.status,
    b.amount,
    b.currency,
    b.expires_at,
    b.payment_intent_id,
    b.last_event,
    b.version,
    b.created_at,
    b.updated_at
FROM booking.bookings AS b;
COMMENT ON VIEW ops.bookings IS 'Every booking and its current status; history in ops.booking_history.';

CREATE OR REPLACE VIEW ops.booking_history AS
SELECT
    booking_id,
    history_id,
    event,
    from_status,
    to_status,
    at,
    actor,
    stripe_event_id,
    correlation_id,
    detail
FROM booking.booking_history;
COMMENT ON VIEW ops.booking_history IS 'Every status change of every booking, with its cause.';

CREATE OR REPLACE VIEW ops.ledger_balances AS
SELECT
    account,
    currency,
    sum(amount)::bigint AS balance
FROM ledger.lines
GROUP BY account, currency;
COMMENT ON VIEW ops.ledger_balances IS
'Signed balance of each account (debits positive); the balances of each currency sum to zero.';

CREATE OR REPLACE VIEW ops.booking_ledger AS
SELECT
    booking_id,
    currency,
    sum(paid)::bigint AS paid,
    sum(refunded)::bigint AS refunded,
    sum(disputed)::bigint AS disputed,
    sum(paid - refunded - disputed)::bigint AS net
FROM ledger.payment_totals
WHERE booking_id IS NOT NULL
GROUP BY booking_id, currency;
COMMENT ON VIEW ops.booking_ledger IS 'Per booking: paid, refunded, disputed (open or lost) and what we keep (net).';

-- Always empty: a row is a ledger transaction whose lines do not balance.
CREATE OR REPLACE VIEW ops.ledger_imbalances AS
SELECT
    t.txn_id,
    t.kind,
    t.stripe_object_id,
    t.currency,
    count(l.line_id) AS lines,
    coalesce(sum(l.amount), 0)::bigint AS total
FROM ledger.transactions AS t
LEFT JOIN ledger.lines AS l ON t.txn_id = l.txn_id
GROUP BY t.txn_id, t.kind, t.stripe_object_id, t.currency
HAVING
    count(l.line_id) < 2
    OR coalesce(sum(l.amount), 0) != 0
    OR count(*) FILTER (WHERE l.currency != t.currency) > 0;
COMMENT ON VIEW ops.ledger_imbalances IS 'Always empty: ledger transactions whose lines do not sum to zero.';

CREATE OR REPLACE VIEW ops.jobs_overview AS
SELECT
    kind,
    status,
    count(*) AS count,
    min(run_at) FILTER (WHERE status IN ('queued', 'failed')) AS oldest_due_at
FROM jobs.jobs
GROUP BY kind, status;
COMMENT ON VIEW ops.jobs_overview IS 'Jobs per kind and status, with the oldest due one.';

CREATE OR REPLACE VIEW ops.open_errors AS
SELECT
    fingerprint,
    severity,
    source,
    message,
    count,
    first_seen,
    last_seen
FROM core.error_groups
WHERE resolved_at IS NULL;
COMMENT ON VIEW ops.open_errors IS 'Unresolved error groups; ops.resolve_error(fingerprint, by) closes one.';

CREATE OR REPLACE VIEW ops.errors AS
SELECT
    error_id,
    fingerprint,
    severity,
    source,
    message,
    detail,
    context,
    sqlstate,
    correlation_id,
    at
FROM core.errors;
COMMENT ON VIEW ops.errors IS 'Every error logged, with its correlation id.';

CREATE OR REPLACE VIEW ops.reconciliation_mismatches AS
SELECT
    m.mismatch_id,
    r.run_id,
    r.window_start,
    r.window_end,
    r.ran_at,
    m.problem,
    m.kind,
    m.stripe_object_id,
    m.stripe_amount,
    m.ledger_amount,
    m.currency,
    m.booking_id
FROM core.reconciliation_mismatches AS m
INNER JOIN core.reconciliation_runs AS r ON m.run_id = r.run_id;
COMMENT ON VIEW ops.reconciliation_mismatches IS 'Every difference the daily reconciliation found between Stripe and the ledger.';

CREATE OR REPLACE VIEW ops.waitlist_overview AS
-- The states as booking.entry_state names them (an offer's state is its hold's), spelled
-- out here because a view's user would need EXECUTE on a function it calls.
WITH states AS (
    SELECT
        x.inventory_id,
        CASE
            WHEN x.status = 'left' THEN 'left'
            WHEN h.status = 'converted' THEN 'claimed'
            WHEN h.status = 'booked' AND h.expires_at > clock_timestamp() THEN 'claimed'
            WHEN h.status = 'live' AND h.expires_at > clock_timestamp() THEN 'offered'
            ELSE 'lapsed'
        END AS state
    FROM booking.waitlist_entries AS x
    LEFT JOIN booking.holds AS h ON x.hold_id = h.hold_id
    WHERE x.status != 'waiting'
)

SELECT
    w.inventory_id,
    i.sku,
    w.waiting,
    count(*) FILTER (WHERE s.state = 'offered') AS offered,
    count(*) FILTER (WHERE s.state = 'claimed') AS claimed,
    count(*) FILTER (WHERE s.state = 'lapsed') AS lapsed,
    count(*) FILTER (WHERE s.state = 'left') AS left_list,
    w.owed AS units_owed
FROM booking.waitlists AS w
INNER JOIN booking.inventory AS i ON w.inventory_id = i.inventory_id
LEFT JOIN states AS s ON w.inventory_id = s.inventory_id
GROUP BY w.inventory_id, i.sku, w.waiting, w.owed;
COMMENT ON VIEW ops.waitlist_overview IS
'Per inventory with a waitlist: entries waiting, offers open, claimed (booked), lapsed (expired or released), left, and units owed to the waiting entries.';
