-- Argument checks shared by every api function: one place for the class-22 errors.

CREATE OR REPLACE FUNCTION core.require(p_value anyelement, p_name text)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
AS $$
-- 22004 when a required argument is NULL.
BEGIN
    IF p_value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', p_name USING ERRCODE = '22004';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION core.require_text(p_value text, p_name text, p_max_length int)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
AS $$
-- 22004 NULL, 22023 empty, 22001 longer than p_max_length characters.
BEGIN
    IF p_value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', p_name USING ERRCODE = '22004';
    END IF;
    IF length(p_value) = 0 THEN
        RAISE EXCEPTION '% must not be empty', p_name USING ERRCODE = '22023';
    END IF;
    IF length(p_value) > p_max_length THEN
        RAISE EXCEPTION '% is % characters long, at most % are allowed', p_name, length(p_value), p_max_length
            USING ERRCODE = '22001';
    END IF;
END;
$$;

-- One range check for every ordered type (it was written out for bigint and for interval):
-- the bigint signature is replaced in the same transaction, so no caller ever misses it.
DROP FUNCTION IF EXISTS core.require_range(bigint, text, bigint, bigint);

CREATE OR REPLACE FUNCTION core.require_range(
    p_value anycompatible, p_name text, p_min anycompatible, p_max anycompatible
)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
AS $$
-- 22004 NULL, 22023 outside [p_min, p_max] (numbers or intervals: their common type).
BEGIN
    IF p_value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', p_name USING ERRCODE = '22004';
    END IF;
    IF p_value < p_min OR p_value > p_max THEN
        RAISE EXCEPTION '% must be between % and %, got %', p_name, p_min, p_max, p_value USING ERRCODE = '22023';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION core.require_interval(p_value interval, p_name text, p_min interval, p_max interval)
RETURNS void
LANGUAGE sql
IMMUTABLE
AS $$
    -- core.require_range for intervals. Its callers keep this name: jobs.sql is applied
    -- before this file, so moving them would leave api.claim_jobs calling an interval range
    -- check that does not exist yet while a database is being upgraded.
    SELECT core.require_range(p_value, p_name, p_min, p_max);
$$;
