-- The outbox: jobs written in the transaction of the change that causes them.

CREATE OR REPLACE FUNCTION jobs.enqueue(
    p_kind text, p_payload jsonb, p_dedupe_key text DEFAULT NULL, p_run_at timestamptz DEFAULT now()
)
RETURNS uuid
LANGUAGE plpgsql
AS $$
-- Adds a job in the caller's transaction; with a dedupe key, at most one job ever exists
-- for it and its id is returned again.
DECLARE
    v_job_id uuid;
BEGIN
    INSERT INTO jobs.jobs (kind, payload, dedupe_key, run_at, correlation_id)
    VALUES (p_kind, p_payload, p_dedupe_key, p_run_at, left(current_setting('app.correlation_id', true), 200))
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING job_id INTO v_job_id;
    IF v_job_id IS NULL THEN
        SELECT j.job_id INTO v_job_id FROM jobs.jobs AS j WHERE j.dedupe_key = p_dedupe_key;
    END IF;
    RETURN v_job_id;
END;
$$;

CREATE OR REPLACE FUNCTION jobs.retry_delay(p_attempt int)
RETURNS interval
LANGUAGE sql
VOLATILE
AS $$
    -- Capped exponential backoff with jitter: about 10 s, 20 s, 40 s ... at most 1 hour,
    -- each between 75% and 125% of that, so failed jobs do not come back in lockstep.
    SELECT least(interval '10 seconds' * power(2, least(greatest(p_attempt, 1) - 1, 16)), interval '1 hour')
        * (0.75 + random() * 0.5);
$$;

CREATE OR REPLACE FUNCTION api.claim_jobs(
    p_worker text, p_kinds text[], p_limit int, p_lease interval DEFAULT '5 minutes'
)
RETURNS TABLE (job_id uuid, kind text, payload jsonb, attempt int, lease_token uuid)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM core.require_text(p_worker, 'p_worker', 200);
    PERFORM core.require(p_kinds, 'p_kinds');
    IF cardinality(p_kinds) = 0 OR array_position(p_kinds, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'p_kinds must name at least one kind and no NULL' USING ERRCODE = '22023';
    END IF;
    PERFORM core.require_range(p_limit, 'p_limit', 1, 1000);
    PERFORM core.require_interval(p_lease, 'p_lease', interval '1 second', interval '1 day');
    -- A job whose lease ran out after its last attempt is dead, not claimed again.
    UPDATE jobs.jobs AS j
    SET status = 'dead', finished_at = clock_timestamp(), lease_token = NULL,
        last_error = 'lease expired on the last attempt',
        errors = j.errors || jsonb_build_object('at', clock_timestamp(), 'attempt', j.attempts,
                                                'error', 'lease expired (worker lost)')
    WHERE j.status = 'running' AND j.lease_expires_at <= clock_timestamp() AND j.attempts >= j.max_attempts
      AND j.kind = ANY(p_kinds);
    RETURN QUERY
    WITH due AS (
        SELECT x.job_id
        FROM jobs.jobs AS x
        WHERE x.kind = ANY(p_kinds)
          AND ((x.status IN ('queued', 'failed') AND x.run_at <= clock_timestamp())
               OR (x.status = 'running' AND x.lease_expires_at <= clock_timestamp()))
        ORDER BY x.run_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE jobs.jobs AS j
    SET status = 'running', attempts = j.attempts + 1, locked_by = p_worker, lease_token = gen_random_uuid(),
        lease_expires_at = clock_timestamp() + p_lease
    FROM due
    WHERE j.job_id = due.job_id
    RETURNING j.job_id, j.kind::text,
        j.payload || CASE WHEN j.correlation_id IS NULL THEN '{}'::jsonb
                          ELSE jsonb_build_object('correlation_id', j.correlation_id) END,
        j.attempts::int, j.lease_token;
END;
$$;
COMMENT ON FUNCTION api.claim_jobs(text, text[], int, interval) IS
'Claims up to p_limit due jobs of p_kinds (FOR UPDATE SKIP LOCKED), counting the attempt, each with a lease token that complete/fail must present; a job whose lease ran out is taken over by the next claim. The payload carries the correlation_id of the change that caused the job.';

CREATE OR REPLACE FUNCTION api.complete_job(p_job_id uuid, p_lease_token uuid, p_result jsonb DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM core.require(p_job_id, 'p_job_id');
    PERFORM core.require(p_lease_token, 'p_lease_token');
    RETURN (api.complete_jobs(ARRAY[p_job_id], ARRAY[p_lease_token], ARRAY[p_result]))[1];
END;
$$;
COMMENT ON FUNCTION api.complete_job(uuid, uuid, jsonb) IS
'Marks a claimed job done; false (and nothing changed) when the lease token is no longer this worker''s: the job was taken over after its lease ran out.';

CREATE OR REPLACE FUNCTION api.fail_job(p_job_id uuid, p_lease_token uuid, p_error text, p_retryable boolean)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM core.require(p_job_id, 'p_job_id');
    PERFORM core.require(p_lease_token, 'p_lease_token');
    PERFORM core.require_text(p_error, 'p_error', 4000);
    PERFORM core.require(p_retryable, 'p_retryable');
    UPDATE jobs.jobs AS j
    SET status = CASE WHEN p_retryable AND j.attempts < j.max_attempts THEN 'failed' ELSE 'dead' END,
        run_at = CASE WHEN p_retryable AND j.attempts < j.max_attempts
            THEN clock_timestamp() + jobs.retry_delay(j.attempts) ELSE j.run_at END,
        finished_at = CASE WHEN p_retryable AND j.attempts < j.max_attempts THEN NULL ELSE clock_timestamp() END,
        last_error = left(p_error, 2000),
        errors = j.errors || jsonb_build_object('at', clock_timestamp(), 'attempt', j.attempts,
                                                'worker', j.locked_by, 'error', left(p_error, 2000)),
        lease_token = NULL, lease_expires_at = NULL
    WHERE j.job_id = p_job_id AND j.lease_token = p_lease_token AND j.status = 'running';
    RETURN FOUND;
END;
$$;
COMMENT ON FUNCTION api.fail_job(uuid, uuid, text, boolean) IS
'Records a failed attempt: retryable ones come back after a capped exponential backoff with jitter until max_attempts, then the job is dead (ops.retry_job brings it back); false when the lease is no longer this worker''s.';

CREATE OR REPLACE FUNCTION ops.retry_job(p_job_id uuid)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_status text;
BEGIN
    PERFORM core.require(p_job_id, 'p_job_id');
    SELECT j.status::text INTO v_status FROM jobs.jobs AS j WHERE j.job_id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % not found', p_job_id USING ERRCODE = 'RB005';
    END IF;
    IF v_status NOT IN ('dead', 'failed') THEN
        RAISE EXCEPTION 'job % is %: only a dead or failed job can be retried', p_job_id, v_status
            USING ERRCODE = 'RB002';
    END IF;
    UPDATE jobs.jobs AS j
    SET status = 'queued', run_at = clock_timestamp(), finished_at = NULL,
        max_attempts = greatest(j.max_attempts, j.attempts + 1)
    WHERE j.job_id = p_job_id;
END;
$$;
COMMENT ON FUNCTION ops.retry_job(uuid) IS 'Makes a dead or failed job due again now (with one more attempt allowed).';

CREATE OR REPLACE FUNCTION api.complete_jobs(p_job_ids uuid[], p_lease_tokens uuid[], p_results jsonb[])
RETURNS boolean[]
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- Marks claimed jobs done in one transaction (a worker's batched completions; also
-- api.complete_job's one): for each job, true if it was completed, false if its lease
-- token is no longer valid.
DECLARE
    v_done uuid[];
BEGIN
    PERFORM core.require(p_job_ids, 'p_job_ids');
    PERFORM core.require(p_lease_tokens, 'p_lease_tokens');
    IF cardinality(p_job_ids) <> cardinality(p_lease_tokens)
        OR (p_results IS NOT NULL AND cardinality(p_results) <> cardinality(p_job_ids)) THEN
        RAISE EXCEPTION 'p_job_ids, p_lease_tokens and p_results must have the same length' USING ERRCODE = '22023';
    END IF;
    IF cardinality(p_job_ids) > 1000 THEN
        RAISE EXCEPTION 'at most 1000 jobs a call' USING ERRCODE = '22023';
    END IF;
    WITH done AS (
        UPDATE jobs.jobs AS j
        SET status = 'done', result = c.result, finished_at = clock_timestamp(), lease_token = NULL,
            lease_expires_at = NULL
        FROM unnest(p_job_ids, p_lease_tokens, coalesce(p_results, array_fill(NULL::jsonb, ARRAY[cardinality(p_job_ids)])))
            AS c (job_id, lease_token, result)
        WHERE j.job_id = c.job_id AND j.lease_token = c.lease_token AND j.status = 'running'
        RETURNING j.job_id
    )
    SELECT coalesce(array_agg(done.job_id), '{}') INTO v_done FROM done;
    RETURN ARRAY(SELECT x = ANY(v_done) FROM unnest(p_job_ids) WITH ORDINALITY AS u (x, n) ORDER BY n);
END;
$$;
COMMENT ON FUNCTION api.complete_jobs(uuid[], uuid[], jsonb[]) IS
'api.complete_job for up to 1000 jobs in one call: returns, job by job, whether it was completed (false: its lease token is no longer valid).';
