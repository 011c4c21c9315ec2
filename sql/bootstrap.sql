-- Run by sql/migrate.sh before anything else, as the session user; idempotent.
-- Roles are cluster-wide, so they are created here when missing, never dropped.
DO $bootstrap$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'booking_owner') THEN
        CREATE ROLE booking_owner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'booking_app') THEN
        CREATE ROLE booking_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'booking_ops') THEN
        CREATE ROLE booking_ops NOLOGIN;
    END IF;
    -- Roles by duty (CONTRACT.md, Roles): the shim and the worker each get only their own
    -- functions, so an application server cannot record a payment or settle a job.
    -- `make run` of an earlier release created booking_shim as its LOGIN holding
    -- booking_app; that login becomes the duty role (the embedded cluster's new login is
    -- shim_login).
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'booking_shim' AND rolcanlogin) THEN
        RAISE NOTICE 'booking_shim was a login (make run of an earlier release): it becomes the NOLOGIN duty role';
        ALTER ROLE booking_shim NOLOGIN;
        IF pg_catalog.pg_has_role('booking_shim', 'booking_app', 'MEMBER') THEN
            REVOKE booking_app FROM booking_shim;
        END IF;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'booking_shim') THEN
        CREATE ROLE booking_shim NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'booking_worker') THEN
        CREATE ROLE booking_worker NOLOGIN;
    END IF;
    -- The migrator runs every file as booking_owner (SET LOCAL ROLE).
    IF NOT pg_catalog.pg_has_role(session_user, 'booking_owner', 'MEMBER') THEN
        EXECUTE pg_catalog.format('GRANT booking_owner TO %I', session_user);
    END IF;
    EXECUTE pg_catalog.format('GRANT CONNECT, CREATE ON DATABASE %I TO booking_owner', pg_catalog.current_database());
    EXECUTE pg_catalog.format('GRANT CONNECT ON DATABASE %I TO booking_app, booking_shim, booking_worker, booking_ops', pg_catalog.current_database());
    -- pg_cron can only be created in the database it is configured for.
    IF pg_catalog.current_database() = pg_catalog.current_setting('cron.database_name', true)
        AND EXISTS (SELECT FROM pg_catalog.pg_available_extensions WHERE name = 'pg_cron') THEN
        CREATE EXTENSION IF NOT EXISTS pg_cron;
    END IF;
END
$bootstrap$;

-- No function this project creates is executable by PUBLIC unless granted.
ALTER DEFAULT PRIVILEGES FOR ROLE booking_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

CREATE SCHEMA IF NOT EXISTS migrate AUTHORIZATION booking_owner;
COMMENT ON SCHEMA migrate IS 'What sql/migrate.sh has applied to this database.';

SET ROLE booking_owner;

CREATE TABLE IF NOT EXISTS migrate.history (
    kind text NOT NULL CHECK (kind IN ('versioned', 'repeatable')),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    checksum text NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    applied_by text NOT NULL DEFAULT session_user,
    PRIMARY KEY (kind, name)
);
COMMENT ON TABLE migrate.history IS
'One row per migration file: versioned files once, repeatables with their last applied checksum.';

CREATE OR REPLACE FUNCTION migrate.plan(p_kind text, p_name text, p_checksum text)
RETURNS boolean
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
-- Whether the file must be applied; refuses an applied versioned file that was edited.
DECLARE
    v_applied text;
BEGIN
    SELECT h.checksum INTO v_applied
    FROM migrate.history AS h
    WHERE h.kind = p_kind AND h.name = p_name;
    IF v_applied IS NULL THEN
        RETURN true;
    END IF;
    IF p_kind = 'versioned' AND v_applied <> p_checksum THEN
        RAISE EXCEPTION 'migration % was edited after it was applied', p_name
            USING ERRCODE = 'RX001',
                  DETAIL = pg_catalog.format('applied checksum %s, file checksum %s', v_applied, p_checksum),
                  HINT = 'Versioned migrations are never edited: restore the file and add a new migration.';
    END IF;
    RETURN v_applied <> p_checksum;
END;
$$;

CREATE OR REPLACE FUNCTION migrate.record(p_kind text, p_name text, p_checksum text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO migrate.history AS h (kind, name, checksum)
    VALUES (p_kind, p_name, p_checksum)
    ON CONFLICT (kind, name) DO UPDATE
        SET checksum = excluded.checksum, applied_at = excluded.applied_at, applied_by = excluded.applied_by;
$$;

RESET ROLE;
