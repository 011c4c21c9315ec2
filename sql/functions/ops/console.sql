-- Functions the on-call console (GET /ops) and GET /metrics call as booking_ops (granted by
-- the GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ops line of grants.sql); the views they use
-- are in sql/views/ops_console.sql. Both read tables only, never a payload or a secret.

-- The console's charts: holds placed, bookings created, webhooks received and errors logged
-- in each of the last 24 hours (the current one included), each an index range count.
CREATE OR REPLACE FUNCTION ops.activity_per_hour()
RETURNS TABLE (hour timestamptz, holds bigint, bookings bigint, webhooks bigint, errors bigint)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- 96 index range counts of a few ms in all: compiling them (JIT, chosen by the row
-- estimates of a million holds) takes longer than running them.
SET jit = off
AS $$
    SELECT
        hr.hour,
        (SELECT count(*) FROM booking.holds AS x
         WHERE x.created_at >= hr.hour AND x.created_at < hr.hour + interval '1 hour'),
        (SELECT count(*) FROM booking.bookings AS x
         WHERE x.created_at >= hr.hour AND x.created_at < hr.hour + interval '1 hour'),
        (SELECT count(*) FROM stripe.events AS x
         WHERE x.received_at >= hr.hour AND x.received_at < hr.hour + interval '1 hour'),
        (SELECT count(*) FROM core.errors AS x
         WHERE x.at >= hr.hour AND x.at < hr.hour + interval '1 hour')
    FROM generate_series(
        date_trunc('hour', now()) - interval '23 hours', date_trunc('hour', now()), interval '1 hour'
    ) AS hr (hour)
    ORDER BY hr.hour;
$$;
COMMENT ON FUNCTION ops.activity_per_hour() IS
'24 rows, oldest first: holds placed, bookings created, Stripe events received and errors logged per hour.';

-- The gauges GET /metrics exports (the shim caches them for a few seconds). label is ''
-- or the cron job's name.
CREATE OR REPLACE FUNCTION ops.metrics_gauges()
RETURNS TABLE (metric text, label text, value double precision)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    SELECT 'live_holds', '', count(*)::float8
    FROM booking.holds AS h
    WHERE h.status IN ('live', 'booked') AND h.expires_at > clock_timestamp()
    UNION ALL
    SELECT 'expired_unswept_holds', '', count(*)::float8
    FROM booking.holds AS h
    WHERE h.status IN ('live', 'booked') AND h.expires_at <= clock_timestamp()
    UNION ALL
    SELECT 'oldest_unswept_hold_seconds', '', coalesce(extract(EPOCH FROM clock_timestamp() - min(h.expires_at)), 0)::float8
    FROM booking.holds AS h
    WHERE h.status IN ('live', 'booked') AND h.expires_at <= clock_timestamp()
    UNION ALL
    SELECT 'jobs_due', '', count(*)::float8
    FROM jobs.jobs AS j
    WHERE j.status IN ('queued', 'failed') AND j.run_at <= now()
    UNION ALL
    SELECT 'jobs_dead', '', count(*)::float8
    FROM jobs.jobs AS j
    WHERE j.status = 'dead'
    UNION ALL
    SELECT 'stripe_events_failed', '', count(*)::float8
    FROM stripe.events AS e
    WHERE e.status = 'failed'
    UNION ALL
    SELECT 'stripe_events_dead', '', count(*)::float8
    FROM stripe.events AS e
    WHERE e.status = 'dead'
    UNION ALL
    SELECT 'open_critical_errors', '', count(*)::float8
    FROM core.error_groups AS g
    WHERE g.resolved_at IS NULL AND g.severity = 'critical'
    UNION ALL
    SELECT 'cron_seconds_since_last_run', c.jobname,
           extract(EPOCH FROM now() - coalesce(r.last_started_at, c.registered_at))::float8
    FROM core.cron_jobs AS c
    LEFT JOIN core.cron_runs AS r ON c.jobname = r.jobname
    UNION ALL
    SELECT 'cron_last_run_failed', c.jobname, (r.last_status IS NOT DISTINCT FROM 'failed')::int::float8
    FROM core.cron_jobs AS c
    LEFT JOIN core.cron_runs AS r ON c.jobname = r.jobname;
$$;
COMMENT ON FUNCTION ops.metrics_gauges() IS
'The database gauges of GET /metrics: live and unswept holds, jobs due and dead, Stripe events failed and dead, open critical errors, per cron job the seconds since its last run and whether it failed.';
