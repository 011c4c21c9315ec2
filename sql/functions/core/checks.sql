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

CREATE OR REPLACE FUNCTION core.require_range(p_value bigint, p_name text, p_min bigint, p_max bigint)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
AS $$
-- 22004 NULL, 22023 outside [p_min, p_max].
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
LANGUAGE plpgsql
IMMUTABLE
AS $$
-- 22004 NULL, 22023 outside [p_min, p_max].
BEGIN
    IF p_value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', p_name USING ERRCODE = '22004';
    END IF;
    IF p_value < p_min OR p_value > p_max THEN
        RAISE EXCEPTION '% must be between % and %, got %', p_name, p_min, p_max, p_value USING ERRCODE = '22023';
    END IF;
END;
$$;
