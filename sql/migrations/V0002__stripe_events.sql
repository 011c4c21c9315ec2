-- Every Stripe event received, stored once by id, with its processing state.
CREATE SCHEMA stripe;
COMMENT ON SCHEMA stripe IS 'Stripe events as received, and their processing state';

CREATE TABLE stripe.events (
    event_id text PRIMARY KEY,
    type text NOT NULL,
    livemode boolean,
    payload jsonb NOT NULL,
    status text NOT NULL,
    attempts int NOT NULL DEFAULT 0,
    last_error text,
    last_sqlstate text,
    received_at timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    next_attempt_at timestamptz,
    correlation_id text,
    CONSTRAINT check_events_event_id CHECK (length(event_id) BETWEEN 1 AND 255),
    CONSTRAINT check_events_type CHECK (length(type) BETWEEN 1 AND 255),
    CONSTRAINT check_events_status CHECK (
        status IN ('processed', 'ignored', 'deferred', 'failed', 'dead')
    ),
    CONSTRAINT check_events_attempts CHECK (attempts >= 0),
    CONSTRAINT check_events_last_error CHECK (length(last_error) <= 2000),
    CONSTRAINT check_events_correlation_id CHECK (length(correlation_id) <= 200),
    CONSTRAINT check_events_retry_due CHECK (
        (status IN ('deferred', 'failed')) = (next_attempt_at IS NOT NULL)
    )
);

-- The retry job reads due events in order of their due time.
CREATE INDEX events_retry_due_idx ON stripe.events (next_attempt_at)
WHERE status IN ('deferred', 'failed');
CREATE INDEX events_received_at_idx ON stripe.events (received_at);
