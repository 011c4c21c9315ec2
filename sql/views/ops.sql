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
