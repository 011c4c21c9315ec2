-- Bookings with a state machine held in data, the double-entry ledger, generic
-- idempotency keys and the outbox of jobs.

-- ---------------------------------------------------------------------------------------
-- Bookings

CREATE TABLE booking.booking_states (
    status text PRIMARY KEY,
    description text NOT NULL
);
INSERT INTO booking.booking_states (status, description) VALUES
('pending_payment', 'holds attached, awaiting payment until expires_at'),
('payment_failed', 'a payment attempt failed; still payable until expires_at'),
('confirmed', 'paid; the units are sold'),
('expired', 'not paid before expires_at; the units went back'),
('cancelled', 'cancelled before payment; the units went back'),
('refund_pending', 'money received that must go back (late payment without capacity, or cancelled after payment)'),
('partially_refunded', 'paid, part of it refunded'),
('refunded', 'all the money went back'),
('disputed', 'the payment is disputed by the card holder');

-- The allowed transitions: any other change of a booking's status raises RB004.
CREATE TABLE booking.booking_transitions (
    from_status text NOT NULL REFERENCES booking.booking_states (status),
    event text NOT NULL,
    to_status text NOT NULL REFERENCES booking.booking_states (status),
    PRIMARY KEY (from_status, event),
    CONSTRAINT check_booking_transitions_event CHECK (event ~ '^[a-z_]{1,40}$')
);
INSERT INTO booking.booking_transitions (from_status, event, to_status) VALUES
('pending_payment', 'payment_succeeded', 'confirmed'),
('payment_failed', 'payment_succeeded', 'confirmed'),
('expired', 'payment_succeeded', 'confirmed'),
('pending_payment', 'payment_succeeded_without_capacity', 'refund_pending'),
('payment_failed', 'payment_succeeded_without_capacity', 'refund_pending'),
('expired', 'payment_succeeded_without_capacity', 'refund_pending'),
('cancelled', 'payment_succeeded_without_capacity', 'refund_pending'),
('pending_payment', 'payment_failed', 'payment_failed'),
('payment_failed', 'payment_failed', 'payment_failed'),
('pending_payment', 'payment_canceled', 'cancelled'),
('payment_failed', 'payment_canceled', 'cancelled'),
('pending_payment', 'expire', 'expired'),
('payment_failed', 'expire', 'expired'),
('pending_payment', 'cancel', 'cancelled'),
('payment_failed', 'cancel', 'cancelled'),
('confirmed', 'cancel', 'refund_pending'),
('partially_refunded', 'cancel', 'refund_pending'),
('confirmed', 'partial_refund', 'partially_refunded'),
('partially_refunded', 'partial_refund', 'partially_refunded'),
('refund_pending', 'partial_refund', 'refund_pending'),
('confirmed', 'full_refund', 'refunded'),
('partially_refunded', 'full_refund', 'refunded'),
('refund_pending', 'full_refund', 'refunded'),
('disputed', 'full_refund', 'refunded'),
('confirmed', 'dispute_opened', 'disputed'),
('partially_refunded', 'dispute_opened', 'disputed'),
('refunded', 'dispute_opened', 'disputed'),
('disputed', 'dispute_won', 'confirmed'),
('disputed', 'dispute_lost', 'refunded');

CREATE TABLE booking.bookings (
    booking_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    holder text NOT NULL,
    -- NULL: created without an idempotency key (no replay protection asked for).
    idempotency_key text,
    request_fingerprint text NOT NULL,
    status text NOT NULL REFERENCES booking.booking_states (status),
    -- Bumped by every transition; the guard trigger requires exactly +1 with an event.
    version int NOT NULL DEFAULT 1,
    last_event text NOT NULL DEFAULT 'created',
    last_stripe_event_id text,
    amount bigint NOT NULL,
    currency text NOT NULL REFERENCES core.currencies (code),
    metadata jsonb NOT NULL DEFAULT '{}',
    expires_at timestamptz NOT NULL,
    payment_intent_id text,
    payment_intent_status text,
    -- The first answer of api.create_booking, replayed verbatim for the same request.
    response jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT bookings_holder_key UNIQUE (holder, idempotency_key),
    CONSTRAINT bookings_payment_intent_key UNIQUE (payment_intent_id),
    CONSTRAINT check_bookings_holder CHECK (length(holder) BETWEEN 1 AND 200),
    CONSTRAINT check_bookings_idempotency_key CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    CONSTRAINT check_bookings_amount CHECK (amount >= 0),
    CONSTRAINT check_bookings_metadata CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT check_bookings_version CHECK (version >= 1),
    CONSTRAINT check_bookings_payment_intent_id CHECK (length(payment_intent_id) BETWEEN 1 AND 255)
);
CREATE INDEX bookings_open_expiry_idx ON booking.bookings (expires_at)
WHERE status IN ('pending_payment', 'payment_failed');

CREATE TABLE booking.booking_history (
    history_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    booking_id uuid NOT NULL REFERENCES booking.bookings (booking_id),
    event text NOT NULL,
    from_status text,
    to_status text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL DEFAULT current_user,
    stripe_event_id text,
    correlation_id text,
    detail text,
    CONSTRAINT check_booking_history_detail CHECK (length(detail) <= 1000)
);
CREATE INDEX booking_history_booking_idx ON booking.booking_history (booking_id, history_id);

ALTER TABLE booking.holds ADD COLUMN booking_id uuid;
ALTER TABLE booking.holds ADD CONSTRAINT check_holds_booked CHECK (status <> 'booked' OR booking_id IS NOT NULL);
-- (booking_id, status): one index for "the booking's booked holds", so no plan ANDs it with a
-- partial index on status (a full scan of every open hold).
CREATE INDEX holds_booking_idx ON booking.holds (booking_id, status) WHERE booking_id IS NOT NULL;

-- ---------------------------------------------------------------------------------------
-- Ledger: double-entry, append-only, integer minor units.

CREATE SCHEMA ledger;
COMMENT ON SCHEMA ledger IS 'Double-entry ledger: one transaction per Stripe object that moved money';

CREATE TABLE ledger.accounts (
    account text PRIMARY KEY,
    description text NOT NULL,
    CONSTRAINT check_accounts_account CHECK (account ~ '^[a-z_]{1,40}$')
);
INSERT INTO ledger.accounts (account, description) VALUES
('cash_at_stripe', 'money held at Stripe for us (asset)'),
('booking_revenue', 'money received for confirmed bookings'),
('unallocated_receipts', 'money received that no booking can keep: owed back to the payer'),
('disputed_funds', 'money Stripe withdrew for open or lost disputes');

CREATE TABLE ledger.transactions (
    txn_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL,
    stripe_object_id text NOT NULL,
    booking_id uuid,
    -- The PaymentIntent the money belongs to (for a charge, its own id).
    payment_intent_id text,
    currency text NOT NULL REFERENCES core.currencies (code),
    amount bigint NOT NULL,
    posted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    stripe_event_id text,
    correlation_id text,
    CONSTRAINT transactions_kind_object_key UNIQUE (kind, stripe_object_id),
    CONSTRAINT check_transactions_kind CHECK (kind IN ('charge', 'refund', 'dispute', 'dispute_reversal')),
    CONSTRAINT check_transactions_object CHECK (length(stripe_object_id) BETWEEN 1 AND 255),
    CONSTRAINT check_transactions_amount CHECK (amount > 0)
);
CREATE INDEX transactions_booking_idx ON ledger.transactions (booking_id, kind);
CREATE INDEX transactions_payment_intent_idx ON ledger.transactions (payment_intent_id);

CREATE TABLE ledger.lines (
    line_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txn_id bigint NOT NULL REFERENCES ledger.transactions (txn_id),
    account text NOT NULL REFERENCES ledger.accounts (account),
    currency text NOT NULL REFERENCES core.currencies (code),
    -- Signed: debits positive, credits negative.
    amount bigint NOT NULL,
    CONSTRAINT check_lines_amount CHECK (amount <> 0)
);
CREATE INDEX lines_txn_idx ON ledger.lines (txn_id);

-- ---------------------------------------------------------------------------------------
-- Idempotency keys for work with outside side effects.

CREATE TABLE core.idempotency_keys (
    scope text NOT NULL,
    principal text NOT NULL,
    key text NOT NULL,
    fingerprint text NOT NULL,
    status text NOT NULL,
    response jsonb,
    response_status int,
    locked_at timestamptz,
    attempts int NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (scope, principal, key),
    CONSTRAINT check_idempotency_keys_scope CHECK (length(scope) BETWEEN 1 AND 100),
    CONSTRAINT check_idempotency_keys_principal CHECK (length(principal) <= 200),
    CONSTRAINT check_idempotency_keys_key CHECK (length(key) BETWEEN 1 AND 255),
    CONSTRAINT check_idempotency_keys_status CHECK (status IN ('started', 'completed', 'failed')),
    CONSTRAINT check_idempotency_keys_response_status CHECK (response_status BETWEEN 100 AND 599),
    CONSTRAINT check_idempotency_keys_final CHECK ((status = 'started') = (response IS NULL))
);
CREATE INDEX idempotency_keys_expires_idx ON core.idempotency_keys (expires_at);

-- ---------------------------------------------------------------------------------------
-- Jobs (outbox): written in the transaction of the change that causes them.

CREATE SCHEMA jobs;
COMMENT ON SCHEMA jobs IS 'Outbox of work with outside effects, done by python -m pyshim worker';

CREATE TABLE jobs.jobs (
    job_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    -- One job per dedupe key: e.g. one confirmation e-mail per booking.
    dedupe_key text,
    status text NOT NULL DEFAULT 'queued',
    run_at timestamptz NOT NULL DEFAULT now(),
    attempts int NOT NULL DEFAULT 0,
    max_attempts int NOT NULL DEFAULT 10,
    locked_by text,
    lease_token uuid,
    lease_expires_at timestamptz,
    last_error text,
    errors jsonb NOT NULL DEFAULT '[]',
    result jsonb,
    correlation_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CONSTRAINT jobs_dedupe_key UNIQUE (dedupe_key),
    CONSTRAINT check_jobs_kind CHECK (
        kind IN ('email.booking_confirmed', 'stripe.refund', 'stripe.reconcile', 'alert.notify', 'bench.noop')
    ),
    CONSTRAINT check_jobs_status CHECK (status IN ('queued', 'running', 'done', 'failed', 'dead')),
    CONSTRAINT check_jobs_attempts CHECK (attempts >= 0 AND max_attempts BETWEEN 1 AND 100),
    CONSTRAINT check_jobs_dedupe_key CHECK (length(dedupe_key) <= 255),
    CONSTRAINT check_jobs_payload CHECK (jsonb_typeof(payload) = 'object')
);
CREATE INDEX jobs_due_idx ON jobs.jobs (run_at) WHERE status IN ('queued', 'failed');
-- Leases that ran out: their jobs are taken over by the next claim.
CREATE INDEX jobs_lease_idx ON jobs.jobs (lease_expires_at) WHERE status = 'running';

-- ---------------------------------------------------------------------------------------
-- What Stripe account and mode this database takes events from (one row).

CREATE TABLE stripe.config (
    singleton boolean PRIMARY KEY DEFAULT TRUE,
    livemode boolean NOT NULL DEFAULT FALSE,
    -- When set, events of another connected account are stored and ignored.
    account_id text,
    CONSTRAINT check_config_singleton CHECK (singleton),
    CONSTRAINT check_config_account_id CHECK (length(account_id) BETWEEN 1 AND 255)
);
INSERT INTO stripe.config DEFAULT VALUES;
