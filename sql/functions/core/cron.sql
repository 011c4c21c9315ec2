-- Scheduled jobs: declared once (sql/cron/schedules.sql), run through one dispatcher that
-- records every run in core.cron_runs, so health can see each job whatever pg_cron keeps.

CREATE OR REPLACE FUNCTION core.sync_cron_jobs(p_jobs jsonb)
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
-- Makes core.cron_jobs and pg_cron's jobs named 'booking-*' equal to p_jobs.
-- SECURITY INVOKER on purpose: pg_cron starts a job as the role that scheduled it, so
-- this runs as the migrating (login) role, never as NOLOGIN booking_owner.
DECLARE
    v_job record;
    v_count int := 0;
BEGIN
    IF jsonb_typeof(p_jobs) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_jobs must be a JSON array' USING ERRCODE = '22023';
    END IF;
    FOR v_job IN
        SELECT j.jobname, j.schedule, j.job_function, j.description, j.max_silence
        FROM jsonb_to_recordset(p_jobs) AS j(
            jobname text, schedule text, job_function text, description text, max_silence interval
        )
    LOOP
        INSERT INTO core.cron_jobs AS c (jobname, schedule, job_function, description, max_silence)
        VALUES (v_job.jobname, v_job.schedule, v_job.job_function, v_job.description, v_job.max_silence)
        ON CONFLICT (jobname) DO UPDATE
            SET schedule = excluded.schedule, job_function = excluded.job_function,
                description = excluded.description, max_silence = excluded.max_silence
            WHERE (c.schedule, c.job_function, c.description, c.max_silence)
                IS DISTINCT FROM (excluded.schedule, excluded.job_function, excluded.description, excluded.max_silence);
        v_count := v_count + 1;
    END LOOP;
    DELETE FROM core.cron_jobs AS c
    WHERE NOT EXISTS (SELECT FROM jsonb_array_elements(p_jobs) AS e WHERE e ->> 'jobname' = c.jobname);

    IF to_regnamespace('cron') IS NULL THEN
        RAISE NOTICE 'pg_cron is not installed in this database: % job(s) registered, none scheduled', v_count;
        RETURN v_count;
    END IF;
    FOR v_job IN SELECT c.jobname, c.schedule, c.job_function FROM core.cron_jobs AS c LOOP
        PERFORM cron.schedule(v_job.jobname, v_job.schedule, core.cron_command(v_job.jobname, v_job.job_function));
    END LOOP;
    PERFORM cron.unschedule(j.jobid)
    FROM cron.job AS j
    WHERE j.jobname LIKE 'booking-%'
      AND NOT EXISTS (SELECT FROM core.cron_jobs AS c WHERE c.jobname = j.jobname);
    RETURN v_count;
END;
$$;

CREATE OR REPLACE FUNCTION core.cron_command(p_jobname text, p_job_function text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- A function job runs through core.run_cron_job, in one transaction; a procedure job
    -- (one that commits as it goes) is CALLed and records its own runs.
    SELECT CASE
        WHEN (SELECT p.prokind FROM pg_proc AS p WHERE p.oid = to_regproc(p_job_function)) = 'p'
            THEN format('CALL %s()', p_job_function)
        ELSE format('SELECT core.run_cron_job(%L)', p_jobname)
    END;
$$;

CREATE OR REPLACE FUNCTION core.cron_run_begin(p_jobname text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO core.cron_runs AS r (jobname, last_started_at, last_status, runs)
    VALUES (p_jobname, clock_timestamp(), 'running', 1)
    ON CONFLICT (jobname) DO UPDATE
        SET last_started_at = excluded.last_started_at, last_status = 'running', runs = r.runs + 1;
$$;

CREATE OR REPLACE FUNCTION core.cron_run_end(p_jobname text, p_result jsonb, p_error text DEFAULT NULL)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE core.cron_runs
    SET last_finished_at = clock_timestamp(),
        last_status = CASE WHEN p_error IS NULL THEN 'ok' ELSE 'failed' END,
        last_error = left(p_error, 2000),
        last_result = p_result,
        failures = failures + CASE WHEN p_error IS NULL THEN 0 ELSE 1 END
    WHERE jobname = p_jobname;
$$;

CREATE OR REPLACE FUNCTION core.run_cron_job(p_jobname text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
-- Runs one registered job function and records the run; a failing job is recorded as
-- failed (and shown by api.health) instead of vanishing into cron.job_run_details.
DECLARE
    v_function text;
    v_result jsonb;
    v_error text;
BEGIN
    SELECT c.job_function INTO v_function FROM core.cron_jobs AS c WHERE c.jobname = p_jobname;
    IF v_function IS NULL THEN
        RAISE EXCEPTION 'unknown cron job %', p_jobname USING ERRCODE = 'RB005';
    END IF;
    PERFORM core.cron_run_begin(p_jobname);
    BEGIN
        EXECUTE format('SELECT to_jsonb(%s())', v_function::regproc) INTO v_result;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_error = MESSAGE_TEXT;
        PERFORM core.cron_run_end(p_jobname, NULL, v_error);
        RETURN jsonb_build_object('status', 'failed', 'error', v_error);
    END;
    PERFORM core.cron_run_end(p_jobname, v_result);
    RETURN v_result;
END;
$$;

CREATE OR REPLACE FUNCTION core.prune_cron_history()
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
-- pg_cron 1.4 never deletes cron.job_run_details; keep 7 days, at most 50k rows a run.
-- Runs as the scheduling role (row-level security on that table shows it only its rows).
DECLARE
    v_deleted int := 0;
BEGIN
    IF to_regnamespace('cron') IS NOT NULL THEN
        DELETE FROM cron.job_run_details
        WHERE runid IN (
            SELECT d.runid FROM cron.job_run_details AS d
            WHERE d.end_time < now() - interval '7 days'
            ORDER BY d.runid
            LIMIT 50000
        );
        GET DIAGNOSTICS v_deleted = ROW_COUNT;
    END IF;
    RETURN jsonb_build_object('deleted', v_deleted);
END;
$$;
