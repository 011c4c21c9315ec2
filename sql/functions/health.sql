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
                WHEN r.last_started_at IS NULL THEN 'ok'
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

    RETURN jsonb_build_object(
        'status', CASE WHEN v_cron_ok AND v_stripe_ok THEN 'ok' ELSE 'degraded' END,
        'checks', jsonb_build_object(
            'database', jsonb_build_object('status', 'ok', 'now', now()),
            'cron', jsonb_build_object('status', CASE WHEN v_cron_ok THEN 'ok' ELSE 'degraded' END, 'jobs', v_cron),
            'stripe_events', v_stripe || jsonb_build_object(
                'status', CASE WHEN v_stripe_ok THEN 'ok' ELSE 'degraded' END,
                'livemode', (SELECT c.livemode FROM stripe.config AS c)
            )
        )
    );
END;
$$;
COMMENT ON FUNCTION api.health() IS
'{"status": ok|degraded, "checks": {...}}: the database, each cron job''s last run and lateness, the Stripe event backlog. "down" is the caller''s answer when this cannot be called.';
