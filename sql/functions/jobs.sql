-- The outbox: jobs written in the transaction of the change that causes them.

CREATE OR REPLACE FUNCTION jobs.enqueue(
    p_kind text, p_payload jsonb, p_dedupe_key text DEFAULT NULL, p_run_at timestamptz DEFAULT now()
)
RETURNS uuid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
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
