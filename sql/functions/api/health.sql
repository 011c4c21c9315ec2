-- api.health(): one JSON document for /readyz and for people.

CREATE OR REPLACE FUNCTION api.health()
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cron jsonb;
    v_cron_ok boolean;
    v_stripe jsonb;
    v_stripe_ok boolean;
    v_jobs jsonb;
    v_jobs_ok boolean;
    v_holds jsonb;
    v_holds_ok boolean;
    v_errors jsonb;
    v_errors_ok boolean;
BEGIN
    -- A job that has not had its first run yet is not late until max_silence after it
    -- was registered.
    SELECT
        coalesce(jsonb_object_agg(j.jobname, jsonb_build_object(
            'status', j.status,
            'schedule', j.schedule,
            'last_started_at', j.last_started_at,
            'last_status', j.last_status,
            'late_by_seconds', greatest(0, floor(extract(EPOCH FROM j.late_by)))::bigint
        )), '{}'::jsonb),
        coalesce(bool_and(j.status = 'ok'), true)
    INTO v_cron, v_cron_ok
    FROM (
        SELECT
            c.jobname, c.schedule, r.last_started_at, r.last_status,
            now() - coalesce(r.last_started_at, c.registered_at) - c.max_silence AS late_by,
            CASE
                WHEN r.last_status = 'failed' THEN 'failed'
                WHEN now() - coalesce(r.last_started_at, c.registered_at) > c.max_silence THEN 'late'
                ELSE 'ok'
            END AS status
        FROM core.cron_jobs AS c
        LEFT JOIN core.cron_runs AS r ON r.jobname = c.jobname
    ) AS j;

    SELECT
        jsonb_build_object(
            'failed', count(*) FILTER (WHERE e.status = 'failed'),
            'deferred', count(*) FILTER (WHERE e.status = 'deferred'),
            'dead', count(*) FILTER (WHERE e.status = 'dead'),
            'oldest_due_at', min(e.next_attempt_at)
        ),
        count(*) FILTER (WHERE e.status = 'dead') = 0
        AND coalesce(min(e.next_attempt_at) > now() - interval '15 minutes', true)
    INTO v_stripe, v_stripe_ok
    FROM stripe.events AS e
    WHERE e.status IN ('failed', 'deferred', 'dead');

    -- The queue: due jobs waiting more than 10 minutes, or dead ones, need someone.
    SELECT
        jsonb_build_object(
            'due', count(*) FILTER (WHERE j.status IN ('queued', 'failed') AND j.run_at <= now()),
            'running', count(*) FILTER (WHERE j.status = 'running'),
            'dead', count(*) FILTER (WHERE j.status = 'dead'),
            'oldest_due_at', min(j.run_at) FILTER (WHERE j.status IN ('queued', 'failed') AND j.run_at <= now())
        ),
        count(*) FILTER (WHERE j.status = 'dead') = 0
        AND coalesce(min(j.run_at) FILTER (WHERE j.status IN ('queued', 'failed')) > now() - interval '10 minutes', true)
    INTO v_jobs, v_jobs_ok
    FROM jobs.jobs AS j
    WHERE j.status IN ('queued', 'failed', 'running', 'dead');

    -- Dead holds not swept 10 minutes after their deadline: the sweeper is not running.
    -- (Answers stay exact meanwhile; only the bookkeeping lags.)
    SELECT
        jsonb_build_object('expired_unswept', count(*), 'oldest_deadline', min(h.expires_at)),
        coalesce(min(h.expires_at) > now() - interval '10 minutes', true)
    INTO v_holds, v_holds_ok
    FROM booking.holds AS h
    WHERE h.status IN ('live', 'booked') AND h.expires_at <= (SELECT clock_timestamp());

    SELECT
        jsonb_build_object('open', count(*), 'open_critical', count(*) FILTER (WHERE g.severity = 'critical')),
        count(*) FILTER (WHERE g.severity = 'critical') = 0
    INTO v_errors, v_errors_ok
    FROM core.error_groups AS g
    WHERE g.resolved_at IS NULL;

    RETURN jsonb_build_object(
        'status', CASE WHEN v_cron_ok AND v_stripe_ok AND v_jobs_ok AND v_holds_ok AND v_errors_ok
            THEN 'ok' ELSE 'degraded' END,
        'checks', jsonb_build_object(
            'database', jsonb_build_object('status', 'ok', 'now', now()),
            'cron', jsonb_build_object('status', CASE WHEN v_cron_ok THEN 'ok' ELSE 'degraded' END, 'jobs', v_cron),
            'stripe_events', v_stripe || jsonb_build_object(
                'status', CASE WHEN v_stripe_ok THEN 'ok' ELSE 'degraded' END,
                'livemode', (SELECT c.livemode FROM stripe.config AS c)
            ),
            'jobs', v_jobs || jsonb_build_object('status', CASE WHEN v_jobs_ok THEN 'ok' ELSE 'degraded' END),
            'holds', v_holds || jsonb_build_object('status', CASE WHEN v_holds_ok THEN 'ok' ELSE 'degraded' END),
            'errors', v_errors || jsonb_build_object('status', CASE WHEN v_errors_ok THEN 'ok' ELSE 'degraded' END)
        )
    );
END;
$$;
COMMENT ON FUNCTION api.health() IS
'{"status": ok|degraded, "checks": {...}}: the database, each cron job''s last run and lateness, the Stripe event backlog (failed, deferred, dead), the job queue (due, oldest due, dead), holds dead but unswept for 10 minutes, open critical errors. "down" is the caller''s answer when this cannot be called.';
