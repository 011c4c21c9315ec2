-- Errors, grouped by fingerprint (contract: "Errors, health, tokens").

CREATE OR REPLACE FUNCTION core.error_fingerprint(p_source text, p_message text)
RETURNS text
LANGUAGE sql
IMMUTABLE
AS $$
    -- Same source and same message but for numbers, ids and quoted values: one group.
    SELECT encode(sha256(convert_to(p_source || E'\n' || regexp_replace(regexp_replace(
        p_message,
        '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|"[^"]*"|''[^'']*''', '?', 'gi'),
        '[0-9]+', '#', 'g'), 'UTF8')), 'hex');
$$;

CREATE OR REPLACE FUNCTION core.log_error(
    p_severity text, p_source text, p_message text, p_detail text DEFAULT NULL,
    p_context jsonb DEFAULT '{}', p_sqlstate text DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
AS $$
-- What api.log_error does, for our own code (a Stripe event not applied, a reconciliation
-- mismatch): internal functions never call api.* (docs/DESIGN.md, "Layers").
DECLARE
    v_fingerprint text;
    v_error_id bigint;
    v_correlation_id text := left(current_setting('app.correlation_id', true), 200);
BEGIN
    PERFORM core.require(p_severity, 'p_severity');
    IF p_severity NOT IN ('debug', 'info', 'warning', 'error', 'critical') THEN
        RAISE EXCEPTION 'p_severity must be debug, info, warning, error or critical, not %', left(p_severity, 20)
            USING ERRCODE = '22023';
    END IF;
    PERFORM core.require_text(p_source, 'p_source', 100);
    PERFORM core.require_text(p_message, 'p_message', 2000);
    IF length(p_detail) > 10000 THEN
        RAISE EXCEPTION 'p_detail is % characters long, at most 10000 are allowed', length(p_detail)
            USING ERRCODE = '22001';
    END IF;
    PERFORM core.require(p_context, 'p_context');
    IF jsonb_typeof(p_context) <> 'object' THEN
        RAISE EXCEPTION 'p_context must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF p_sqlstate IS NOT NULL AND p_sqlstate !~ '^[0-9A-Z]{5}$' THEN
        RAISE EXCEPTION 'p_sqlstate must be five characters [0-9A-Z]' USING ERRCODE = '22023';
    END IF;
    v_fingerprint := core.error_fingerprint(p_source, p_message);
    INSERT INTO core.error_groups AS g (fingerprint, severity, source, message)
    VALUES (v_fingerprint, p_severity, p_source, p_message)
    ON CONFLICT (fingerprint) DO UPDATE
        SET count = g.count + 1, last_seen = now(), resolved_at = NULL, resolved_by = NULL,
            severity = CASE WHEN g.severity = 'critical' OR excluded.severity = 'critical' THEN 'critical'
                            ELSE excluded.severity END;
    INSERT INTO core.errors (fingerprint, severity, source, message, detail, context, sqlstate, correlation_id)
    VALUES (v_fingerprint, p_severity, p_source, p_message, p_detail, p_context, p_sqlstate, v_correlation_id)
    RETURNING error_id INTO v_error_id;
    IF p_severity = 'critical' THEN
        -- One alert per group per 10 minutes at most; the worker posts it to ALERT_WEBHOOK_URL.
        PERFORM jobs.enqueue('alert.notify', jsonb_build_object(
            'error_id', v_error_id, 'fingerprint', v_fingerprint, 'severity', p_severity, 'source', p_source,
            'message', p_message, 'correlation_id', v_correlation_id),
            'alert.notify:' || v_fingerprint || ':' || (extract(EPOCH FROM now())::bigint / 600));
    END IF;
    RETURN v_error_id;
END;
$$;

CREATE OR REPLACE FUNCTION api.log_error(
    p_severity text, p_source text, p_message text, p_detail text DEFAULT NULL,
    p_context jsonb DEFAULT '{}', p_sqlstate text DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN core.log_error(p_severity, p_source, p_message, p_detail, p_context, p_sqlstate);
END;
$$;
COMMENT ON FUNCTION api.log_error(text, text, text, text, jsonb, text) IS
'Records an error (severity debug|info|warning|error|critical) with app.correlation_id, grouped by fingerprint (ops.open_errors); a critical one enqueues an alert.notify job. Returns the error id.';

CREATE OR REPLACE FUNCTION ops.resolve_error(p_fingerprint text, p_by text)
RETURNS int
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count int;
BEGIN
    PERFORM core.require_text(p_fingerprint, 'p_fingerprint', 64);
    PERFORM core.require_text(p_by, 'p_by', 200);
    UPDATE core.error_groups
    SET resolved_at = now(), resolved_by = p_by
    WHERE fingerprint = p_fingerprint AND resolved_at IS NULL;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;
COMMENT ON FUNCTION ops.resolve_error(text, text) IS
'Marks an error group resolved (it reopens if the error comes back); returns 1, or 0 if it was not open.';
