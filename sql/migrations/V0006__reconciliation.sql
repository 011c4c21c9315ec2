-- Daily reconciliation of the ledger against Stripe's own lists.

CREATE TABLE core.reconciliation_runs (
    run_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    checked int NOT NULL,
    mismatches int NOT NULL,
    ran_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT check_reconciliation_runs_window CHECK (window_start < window_end)
);

CREATE TABLE core.reconciliation_mismatches (
    mismatch_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id bigint NOT NULL REFERENCES core.reconciliation_runs (run_id),
    problem text NOT NULL,
    kind text NOT NULL,
    stripe_object_id text NOT NULL,
    stripe_amount bigint,
    ledger_amount bigint,
    currency text,
    booking_id uuid,
    CONSTRAINT check_reconciliation_mismatches_problem CHECK (
        problem IN ('missing_in_ledger', 'missing_at_stripe', 'amount_differs')
    )
);
CREATE INDEX reconciliation_mismatches_run_idx ON core.reconciliation_mismatches (run_id);
