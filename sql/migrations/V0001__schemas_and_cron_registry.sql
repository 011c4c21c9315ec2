-- Schemas, and the registry that pg_cron jobs report to.
-- api: the only surface applications call. ops: views and repair functions for DBAs.
-- core: shared internals. Tables are private: booking_app has no privilege on any table.
CREATE SCHEMA api;
COMMENT ON SCHEMA api IS 'Functions applications call (granted to booking_app); see \df+ api.*';
CREATE SCHEMA ops;
COMMENT ON SCHEMA ops IS 'Views and repair functions for DBAs and on-call (granted to booking_ops)';
CREATE SCHEMA core;
COMMENT ON SCHEMA core IS 'Shared internals: cron job registry and run heartbeats';

-- Every scheduled job, as declared by sql/cron/schedules.sql.
CREATE TABLE core.cron_jobs (
    jobname text PRIMARY KEY,
    schedule text NOT NULL,
    job_function text NOT NULL,
    description text NOT NULL,
    -- Longer than this without a run and api.health() reports the job late.
    max_silence interval NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT check_cron_jobs_jobname CHECK (jobname ~ '^booking-[a-z0-9-]{1,60}$'),
    CONSTRAINT check_cron_jobs_function CHECK (job_function ~ '^[a-z_]+\.[a-z_0-9]+$'),
    CONSTRAINT check_cron_jobs_max_silence CHECK (max_silence > interval '0')
);

-- Written by core.run_cron_job around every run: pg_cron's own cron.job_run_details is
-- row-level-secured to the scheduling user and is pruned, so health reads this instead.
CREATE TABLE core.cron_runs (
    jobname text PRIMARY KEY REFERENCES core.cron_jobs (jobname) ON DELETE CASCADE,
    last_started_at timestamptz,
    last_finished_at timestamptz,
    last_status text CHECK (last_status IN ('running', 'ok', 'failed')),
    last_error text,
    last_result jsonb,
    runs bigint NOT NULL DEFAULT 0,
    failures bigint NOT NULL DEFAULT 0
);
