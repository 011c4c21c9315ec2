-- What the on-call console (GET /ops) and the Prometheus gauges (GET /metrics) read, one
-- view per panel, as a login holding only booking_ops (the functions they call are in
-- sql/functions/console.sql). Nothing here returns a payload, a client secret, a token hash
-- or an error's detail/context (they may carry customer data): only ids, states, counts,
-- times and messages. Applied after ops.sql (file order), whose views some of these read.

-- Each cron job's lateness, as api.health() judges it: 'late' once the job has been
-- silent for longer than its max_silence (a job never run counts from its registration).
CREATE OR REPLACE VIEW ops.cron_lateness AS
SELECT
    j.jobname,
    j.schedule,
    j.max_silence,
    j.last_started_at,
    j.last_finished_at,
    j.last_status,
    j.last_error,
    j.runs,
    j.failures,
    round(j.silent_seconds, 1) AS seconds_since_last_run,
    round(greatest(0, j.silent_seconds - extract(EPOCH FROM j.max_silence)), 1) AS late_by_seconds,
    CASE
        WHEN j.last_status = 'failed' THEN 'failed'
        WHEN j.silent_seconds > extract(EPOCH FROM j.max_silence) THEN 'late'
        WHEN j.last_started_at IS NULL THEN 'not_run_yet'
        ELSE 'ok'
    END AS status
FROM (
    SELECT
        c.jobname,
        c.schedule,
        c.max_silence,
        r.last_started_at,
        r.last_finished_at,
        r.last_status,
        r.last_error,
        coalesce(r.runs, 0) AS runs,
        coalesce(r.failures, 0) AS failures,
        extract(EPOCH FROM now() - coalesce(r.last_started_at, c.registered_at)) AS silent_seconds
    FROM core.cron_jobs AS c
    LEFT JOIN core.cron_runs AS r ON c.jobname = r.jobname
) AS j;
COMMENT ON VIEW ops.cron_lateness IS
'Each cron job: its last run, seconds since it, how late it is past max_silence, and ok | late | failed | not_run_yet.';

-- Failed (retrying) and dead (out of retries) Stripe events: no payload, only the state.
CREATE OR REPLACE VIEW ops.stripe_events_failing AS
SELECT
    e.event_id,
    e.type,
    e.status,
    e.attempts,
    e.last_sqlstate,
    e.last_error,
    e.received_at,
    e.next_attempt_at
FROM stripe.events AS e
WHERE e.status IN ('failed', 'dead');
COMMENT ON VIEW ops.stripe_events_failing IS
'Stripe events failing (retried with backoff) or dead (replay with ops.replay_stripe_event); no payloads.';

-- The job queue without reading every job ever done: each status that waits or needs
-- someone through its own partial index, and the jobs done in the last 24 hours.
CREATE OR REPLACE VIEW ops.job_queue AS
SELECT
    j.kind,
    j.status,
    count(*) AS count,
    min(j.run_at) AS oldest_due_at
FROM jobs.jobs AS j
WHERE j.status IN ('queued', 'failed')
GROUP BY j.kind, j.status
UNION ALL
SELECT
    j.kind,
    j.status,
    count(*) AS count,
    NULL::timestamptz AS oldest_due_at
FROM jobs.jobs AS j
WHERE j.status = 'running'
GROUP BY j.kind, j.status
UNION ALL
SELECT
    j.kind,
    j.status,
    count(*) AS count,
    NULL::timestamptz AS oldest_due_at
FROM jobs.jobs AS j
WHERE j.status = 'dead'
GROUP BY j.kind, j.status
UNION ALL
SELECT
    j.kind,
    'done in 24 h' AS status,
    count(*) AS count,
    NULL::timestamptz AS oldest_due_at
FROM jobs.jobs AS j
WHERE j.created_at > now() - interval '24 hours' AND j.status = 'done'
GROUP BY j.kind;
COMMENT ON VIEW ops.job_queue IS
'Jobs queued, failed, running or dead per kind (with the oldest run time of those waiting), and those done in the last 24 hours.';

-- The planning document's success measures, measured live from what the database records.
-- One row each: value over its window, the target in words, whether it is met.
CREATE OR REPLACE VIEW ops.success_metrics AS
WITH
-- Money arriving for bookings, by the state the booking was in when it arrived.
payments AS (
    SELECT
        count(*) AS total,
        count(*) FILTER (
            WHERE hst.from_status = 'expired'
            OR (hst.event = 'payment_succeeded_without_capacity' AND hst.from_status <> 'cancelled')
        ) AS late
    FROM booking.booking_history AS hst
    WHERE
        hst.at > now() - interval '7 days'
        -- Payments come from Stripe events: this reads booking_history_stripe_at_idx only.
        AND hst.stripe_event_id IS NOT NULL
        AND hst.event IN ('payment_succeeded', 'payment_succeeded_without_capacity')
),

-- Charges of the last 7 days, and whether a booking recorded their PaymentIntent (one
-- probe of the unique index each: a hash join would read every booking ever made).
charges AS (
    SELECT
        t.booking_id,
        (
            SELECT count(*) FROM booking.bookings AS b
            WHERE b.payment_intent_id = t.payment_intent_id
        ) > 0 AS recorded
    FROM ledger.transactions AS t
    WHERE t.kind = 'charge' AND t.posted_at > now() - interval '7 days'
),

sweeper AS (
    SELECT
        l.seconds_since_last_run,
        l.status,
        extract(EPOCH FROM l.max_silence) AS max_silence_seconds
    FROM ops.cron_lateness AS l
    WHERE l.jobname = 'booking-sweep-holds'
),

keys AS (
    SELECT
        count(*) AS total,
        count(*) FILTER (WHERE k.attempts > 1) AS reused
    FROM core.idempotency_keys AS k
    WHERE k.created_at > now() - interval '7 days'
),

-- An alert job is enqueued in the transaction that logs the critical error: its age when
-- done (or now, while it is not) is how long the alert took.
alerts AS (
    SELECT
        max(extract(EPOCH FROM CASE WHEN j.status = 'done' THEN j.finished_at ELSE now() END - j.created_at))
            AS slowest_seconds
    FROM jobs.jobs AS j
    WHERE j.kind = 'alert.notify' AND j.created_at > now() - interval '7 days'
),

resolution AS (
    SELECT avg(extract(EPOCH FROM coalesce(g.resolved_at, now()) - g.first_seen) / 3600) AS mean_hours
    FROM core.error_groups AS g
    WHERE g.severity IN ('error', 'critical') AND g.first_seen > now() - interval '7 days'
),

-- Two index-only counts (a FILTER per row over both months costs several times more).
error_rate AS (
    SELECT
        (
            SELECT count(*) FROM core.errors AS e
            WHERE e.at > now() - interval '30 days'
        ) / 30.0 AS last_per_day,
        (
            SELECT count(*) FROM core.errors AS e
            WHERE e.at > now() - interval '60 days' AND e.at <= now() - interval '30 days'
        ) / 30.0 AS previous_per_day
),

measures (metric, value, target, ok, period, position) AS (
    SELECT
        'zombie_holds',
        count(*)::numeric,
        '= 0',
        count(*) = 0,
        'now: open holds 20 minutes past their deadline',
        1
    FROM booking.holds AS h
    WHERE h.status IN ('live', 'booked') AND h.expires_at < now() - interval '20 minutes'
    UNION ALL
    SELECT
        'sweeper_seconds_since_run',
        coalesce(max(s.seconds_since_last_run), -1),
        '<= ' || coalesce(max(s.max_silence_seconds)::bigint::text, '?') || ' s, last run ok',
        coalesce(bool_and(s.status IN ('ok', 'not_run_yet')), FALSE),
        'now: booking-sweep-holds (scheduled every minute)',
        2
    FROM sweeper AS s
    UNION ALL
    SELECT
        'late_payments_pct',
        CASE WHEN p.total = 0 THEN 0 ELSE round(100.0 * p.late / p.total, 3) END,
        '< 1 %',
        p.total = 0 OR 100.0 * p.late / p.total < 1,
        'last 7 days: payments arriving after the booking''s holds expired',
        3
    FROM payments AS p
    UNION ALL
    SELECT
        'duplicate_charges',
        count(*)::numeric,
        '= 0',
        count(*) = 0,
        'last 7 days: bookings charged more than once',
        4
    FROM (
        SELECT c.booking_id
        FROM charges AS c
        WHERE c.booking_id IS NOT NULL
        GROUP BY c.booking_id
        HAVING count(*) > 1
    ) AS d
    UNION ALL
    SELECT
        'payment_intents_recorded_pct',
        CASE WHEN count(*) = 0 THEN 100 ELSE round(100.0 * count(*) FILTER (WHERE c.recorded) / count(*), 3) END,
        '= 100 %',
        bool_and(c.recorded) IS NOT FALSE,
        'last 7 days: charges whose PaymentIntent a booking recorded',
        5
    FROM charges AS c
    UNION ALL
    SELECT
        'events_applied_twice',
        count(*)::numeric,
        '= 0',
        count(*) = 0,
        'last 7 days: (event, booking, transition) recorded more than once',
        6
    FROM (
        SELECT hst.stripe_event_id
        FROM booking.booking_history AS hst
        WHERE hst.at > now() - interval '7 days' AND hst.stripe_event_id IS NOT NULL
        GROUP BY hst.stripe_event_id, hst.booking_id, hst.event
        HAVING count(*) > 1
    ) AS twice
    UNION ALL
    SELECT
        'idempotency_key_reuse_pct',
        CASE WHEN k.total = 0 THEN 0 ELSE round(100.0 * k.reused / k.total, 3) END,
        '< 0.1 %',
        k.total = 0 OR 100.0 * k.reused / k.total < 0.1,
        'last 7 days: idempotency keys whose work was started more than once',
        7
    FROM keys AS k
    UNION ALL
    SELECT
        'critical_alert_latency_seconds',
        coalesce(round(a.slowest_seconds, 1), 0),
        '<= 60 s',
        coalesce(a.slowest_seconds <= 60, TRUE),
        'last 7 days: slowest critical-error alert (alert.notify job done, or still waiting)',
        8
    FROM alerts AS a
    UNION ALL
    SELECT
        'error_resolution_hours',
        coalesce(round(r.mean_hours, 2), 0),
        '< 4 h',
        coalesce(r.mean_hours < 4, TRUE),
        'errors first seen in the last 7 days: mean hours to resolve (open ones count until now)',
        9
    FROM resolution AS r
    UNION ALL
    SELECT
        'errors_per_day',
        round(er.last_per_day, 2),
        '<= ' || round(er.previous_per_day, 2)::text || ' (the 30 days before)',
        er.last_per_day <= er.previous_per_day,
        'last 30 days against the 30 days before: trending down or flat',
        10
    FROM error_rate AS er
)

SELECT
    m.metric,
    m.value,
    m.target,
    m.ok,
    m.period
FROM measures AS m
ORDER BY m.position;
COMMENT ON VIEW ops.success_metrics IS
'The planning document''s success measures, live: metric, value (numeric), target (in words), ok, period (the window and what is counted).';
