-- Generic idempotency keys for work with outside side effects (contract: "Idempotency").

CREATE OR REPLACE FUNCTION api.idempotency_begin(
    p_scope text, p_key text, p_principal text, p_request jsonb,
    p_lock_timeout interval DEFAULT '2 minutes',
    p_ttl interval DEFAULT '48 hours'
)
RETURNS TABLE (outcome text, response jsonb, response_status int)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_fingerprint text;
    v_row core.idempotency_keys;
BEGIN
    PERFORM core.require_text(p_scope, 'p_scope', 100);
    PERFORM core.require_text(p_key, 'p_key', 255);
    IF p_principal IS NULL THEN
        RAISE EXCEPTION 'p_principal must not be NULL (use '''' for none)' USING ERRCODE = '22004';
    END IF;
    IF length(p_principal) > 200 THEN
        RAISE EXCEPTION 'p_principal is % characters long, at most 200 are allowed', length(p_principal)
            USING ERRCODE = '22001';
    END IF;
    PERFORM core.require(p_request, 'p_request');
    PERFORM core.require_interval(p_lock_timeout, 'p_lock_timeout', interval '1 second', interval '1 day');
    PERFORM core.require_interval(p_ttl, 'p_ttl', interval '1 minute', interval '90 days');
    -- jsonb is canonical: key order and whitespace do not change the fingerprint.
    v_fingerprint := encode(sha256(convert_to(p_request::text, 'UTF8')), 'hex');

    INSERT INTO core.idempotency_keys AS k (scope, principal, key, fingerprint, status, locked_at, expires_at)
    VALUES (p_scope, p_principal, p_key, v_fingerprint, 'started', clock_timestamp(), clock_timestamp() + p_ttl)
    ON CONFLICT (scope, principal, key) DO NOTHING;
    IF FOUND THEN
        RETURN QUERY SELECT 'started'::text, NULL::jsonb, NULL::int;
        RETURN;
    END IF;

    SELECT * INTO v_row FROM core.idempotency_keys AS k
    WHERE k.scope = p_scope AND k.principal = p_principal AND k.key = p_key
    FOR UPDATE;
    IF v_row.expires_at <= clock_timestamp() THEN
        -- Past its time to live: the key is new again.
        UPDATE core.idempotency_keys AS k
        SET fingerprint = v_fingerprint, status = 'started', response = NULL, response_status = NULL,
            locked_at = clock_timestamp(), attempts = 1, created_at = now(), completed_at = NULL,
            expires_at = clock_timestamp() + p_ttl
        WHERE k.scope = p_scope AND k.principal = p_principal AND k.key = p_key;
        RETURN QUERY SELECT 'started'::text, NULL::jsonb, NULL::int;
        RETURN;
    END IF;
    IF v_row.fingerprint <> v_fingerprint THEN
        RAISE EXCEPTION 'idempotency key % was used for another request', p_key USING ERRCODE = 'RI001';
    END IF;
    IF v_row.status IN ('completed', 'failed') THEN
        RETURN QUERY SELECT 'replay'::text, v_row.response, v_row.response_status;
        RETURN;
    END IF;
    IF v_row.locked_at > clock_timestamp() - p_lock_timeout THEN
        RAISE EXCEPTION 'a request with idempotency key % is in progress', p_key
            USING ERRCODE = 'RI002',
                  DETAIL = pg_catalog.format('started at %s, taken over after %s', v_row.locked_at, p_lock_timeout);
    END IF;
    -- Abandoned (its caller crashed): this caller takes it over.
    UPDATE core.idempotency_keys AS k
    SET locked_at = clock_timestamp(), attempts = k.attempts + 1
    WHERE k.scope = p_scope AND k.principal = p_principal AND k.key = p_key;
    RETURN QUERY SELECT 'started'::text, NULL::jsonb, NULL::int;
END;
$$;
COMMENT ON FUNCTION api.idempotency_begin(text, text, text, jsonb, interval, interval) IS
'Starts work under (scope, principal, key): outcome ''started'' (do the work, then complete or fail it) or ''replay'' (return response/response_status as stored). RI001 same key with a different request (checked first); RI002 another caller holds it; a ''started'' key older than p_lock_timeout is taken over. p_principal is never NULL (use '''').';

CREATE OR REPLACE FUNCTION core.started_idempotency_key(p_scope text, p_key text, p_principal text)
RETURNS core.idempotency_keys
LANGUAGE plpgsql
AS $$
-- The locked, started key row; RB005 unknown, RB002 not in progress.
DECLARE
    v_row core.idempotency_keys;
BEGIN
    SELECT * INTO v_row FROM core.idempotency_keys AS k
    WHERE k.scope = p_scope AND k.principal = p_principal AND k.key = p_key
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no idempotency key % in scope %', p_key, p_scope USING ERRCODE = 'RB005';
    END IF;
    IF v_row.status <> 'started' THEN
        RAISE EXCEPTION 'idempotency key % is already %', p_key, v_row.status USING ERRCODE = 'RB002';
    END IF;
    RETURN v_row;
END;
$$;

CREATE OR REPLACE FUNCTION api.idempotency_complete(
    p_scope text, p_key text, p_principal text, p_response jsonb, p_response_status int
)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM core.require(p_response, 'p_response');
    PERFORM core.require_range(p_response_status, 'p_response_status', 100, 599);
    PERFORM core.started_idempotency_key(p_scope, p_key, p_principal);
    UPDATE core.idempotency_keys AS k
    SET status = 'completed', response = p_response, response_status = p_response_status,
        completed_at = clock_timestamp()
    WHERE k.scope = p_scope AND k.principal = p_principal AND k.key = p_key;
END;
$$;
COMMENT ON FUNCTION api.idempotency_complete(text, text, text, jsonb, int) IS
'Stores the answer of started work; later begins with the same request replay it. RB005 unknown key, RB002 not in progress.';

CREATE OR REPLACE FUNCTION api.idempotency_fail(
    p_scope text, p_key text, p_principal text, p_error text, p_retryable boolean
)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM core.require_text(p_error, 'p_error', 2000);
    PERFORM core.require(p_retryable, 'p_retryable');
    PERFORM core.started_idempotency_key(p_scope, p_key, p_principal);
    IF p_retryable THEN
        DELETE FROM core.idempotency_keys AS k
        WHERE k.scope = p_scope AND k.principal = p_principal AND k.key = p_key;
    ELSE
        UPDATE core.idempotency_keys AS k
        SET status = 'failed', response_status = 422, completed_at = clock_timestamp(),
            response = jsonb_build_object('error', jsonb_build_object('code', 'failed', 'message', p_error))
        WHERE k.scope = p_scope AND k.principal = p_principal AND k.key = p_key;
    END IF;
END;
$$;
COMMENT ON FUNCTION api.idempotency_fail(text, text, text, text, boolean) IS
'Ends started work that failed. Retryable: the key is freed for a retry. Not retryable: stored as the final answer, replayed as {"error": {"code": "failed", "message": p_error}} with status 422.';

CREATE OR REPLACE FUNCTION core.purge_idempotency_keys(p_batch_size int DEFAULT 10000)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- Deletes keys past their time to live, one batch (a started key is kept while locked).
DECLARE
    v_deleted int;
BEGIN
    DELETE FROM core.idempotency_keys
    WHERE (scope, principal, key) IN (
        SELECT k.scope, k.principal, k.key FROM core.idempotency_keys AS k
        WHERE k.expires_at < now()
        ORDER BY k.expires_at
        LIMIT p_batch_size
        FOR UPDATE SKIP LOCKED
    );
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN jsonb_build_object('deleted', v_deleted);
END;
$$;
