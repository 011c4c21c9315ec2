-- Error monitoring (grouped by fingerprint) and refresh-token families.

CREATE TABLE core.error_groups (
    fingerprint text PRIMARY KEY,
    severity text NOT NULL,
    source text NOT NULL,
    message text NOT NULL,
    count bigint NOT NULL DEFAULT 1,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolved_by text,
    CONSTRAINT check_error_groups_severity CHECK (severity IN ('debug', 'info', 'warning', 'error', 'critical'))
);
CREATE INDEX error_groups_open_idx ON core.error_groups (last_seen) WHERE resolved_at IS NULL;

CREATE TABLE core.errors (
    error_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fingerprint text NOT NULL REFERENCES core.error_groups (fingerprint),
    severity text NOT NULL,
    source text NOT NULL,
    message text NOT NULL,
    detail text,
    context jsonb NOT NULL DEFAULT '{}',
    sqlstate text,
    correlation_id text,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT check_errors_severity CHECK (severity IN ('debug', 'info', 'warning', 'error', 'critical')),
    CONSTRAINT check_errors_source CHECK (length(source) BETWEEN 1 AND 100),
    CONSTRAINT check_errors_message CHECK (length(message) BETWEEN 1 AND 2000),
    CONSTRAINT check_errors_detail CHECK (length(detail) <= 10000),
    CONSTRAINT check_errors_context CHECK (jsonb_typeof(context) = 'object'),
    CONSTRAINT check_errors_sqlstate CHECK (sqlstate ~ '^[0-9A-Z]{5}$')
);
CREATE INDEX errors_fingerprint_idx ON core.errors (fingerprint, error_id);
CREATE INDEX errors_at_idx ON core.errors (at);

-- Refresh tokens, stored only as HMAC-SHA256(pepper, token): the database never sees one.
CREATE TABLE core.refresh_tokens (
    token_hash bytea PRIMARY KEY,
    family_id uuid NOT NULL,
    user_id text NOT NULL,
    issued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz NOT NULL,
    rotated_at timestamptz,
    replaced_by bytea,
    revoked_at timestamptz,
    revoked_reason text,
    CONSTRAINT check_refresh_tokens_hash CHECK (length(token_hash) = 32),
    CONSTRAINT check_refresh_tokens_user CHECK (length(user_id) BETWEEN 1 AND 200)
);
CREATE INDEX refresh_tokens_family_idx ON core.refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON core.refresh_tokens (user_id) WHERE revoked_at IS NULL;
CREATE INDEX refresh_tokens_expires_idx ON core.refresh_tokens (expires_at);
