-- Reconciliation: the worker lists what Stripe holds for a window, this compares it with
-- the ledger and records every difference.

CREATE OR REPLACE FUNCTION api.reconcile(p_window_start timestamptz, p_window_end timestamptz, p_stripe jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- p_stripe: [{"kind": "charge"|"refund", "id", "amount", "currency", "created"}] for the
-- money Stripe moved (succeeded PaymentIntents, keyed as charges, and succeeded refunds)
-- created in the window. Differences both ways: an object Stripe has and the ledger not,
-- a ledger posting (posted in the window) Stripe does not list, or other amounts. Each is
-- a row of ops.reconciliation_mismatches and a critical error.
DECLARE
    v_run_id bigint;
    v_count int;
    v_checked int;
    v_row record;
BEGIN
    PERFORM core.require(p_window_start, 'p_window_start');
    PERFORM core.require(p_window_end, 'p_window_end');
    IF p_window_start >= p_window_end THEN
        RAISE EXCEPTION 'the window must start before it ends' USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(p_stripe) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_stripe must be a JSON array' USING ERRCODE = '22023';
    END IF;
    CREATE TEMP TABLE IF NOT EXISTS reconcile_stripe (
        kind text, id text, amount bigint, currency text
    ) ON COMMIT DROP;
    -- plpgsql_check reads the body before any call has created this table: the pragma
    -- (a constant to PL/pgSQL, so nothing at run time) gives it the table's shape.
    PERFORM 'PRAGMA:TABLE: reconcile_stripe (kind text, id text, amount bigint, currency text)';
    TRUNCATE pg_temp.reconcile_stripe;
    INSERT INTO pg_temp.reconcile_stripe
    SELECT s.kind, s.id, s.amount, s.currency
    FROM jsonb_to_recordset(p_stripe) AS s(kind text, id text, amount bigint, currency text)
    WHERE s.kind IN ('charge', 'refund');
    GET DIAGNOSTICS v_checked = ROW_COUNT;

    INSERT INTO core.reconciliation_runs (window_start, window_end, checked, mismatches)
    VALUES (p_window_start, p_window_end, v_checked, 0)
    RETURNING run_id INTO v_run_id;

    INSERT INTO core.reconciliation_mismatches (
        run_id, problem, kind, stripe_object_id, stripe_amount, ledger_amount, currency, booking_id
    )
    SELECT v_run_id,
           CASE WHEN t.txn_id IS NULL THEN 'missing_in_ledger' ELSE 'amount_differs' END,
           s.kind, s.id, s.amount, t.amount, s.currency, t.booking_id
    FROM pg_temp.reconcile_stripe AS s
    LEFT JOIN ledger.transactions AS t ON t.kind = s.kind AND t.stripe_object_id = s.id
    WHERE t.txn_id IS NULL OR (t.amount, t.currency) IS DISTINCT FROM (s.amount, s.currency)
    UNION ALL
    SELECT v_run_id, 'missing_at_stripe', t.kind, t.stripe_object_id, NULL, t.amount, t.currency, t.booking_id
    FROM ledger.transactions AS t
    WHERE t.kind IN ('charge', 'refund')
      AND t.posted_at >= p_window_start AND t.posted_at < p_window_end
      AND NOT EXISTS (SELECT FROM pg_temp.reconcile_stripe AS s WHERE s.kind = t.kind AND s.id = t.stripe_object_id);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    UPDATE core.reconciliation_runs SET mismatches = v_count WHERE run_id = v_run_id;

    FOR v_row IN
        SELECT m.problem, m.kind, m.stripe_object_id, m.stripe_amount, m.ledger_amount
        FROM core.reconciliation_mismatches AS m WHERE m.run_id = v_run_id
    LOOP
        PERFORM core.log_error('critical', 'reconciliation',
            pg_catalog.format('%s: %s %s (Stripe %s, ledger %s)', v_row.problem, v_row.kind, v_row.stripe_object_id,
                              coalesce(v_row.stripe_amount::text, '-'), coalesce(v_row.ledger_amount::text, '-')),
            NULL, jsonb_build_object('run_id', v_run_id));
    END LOOP;
    RETURN jsonb_build_object('run_id', v_run_id, 'checked', v_checked, 'mismatches', v_count);
END;
$$;
COMMENT ON FUNCTION api.reconcile(timestamptz, timestamptz, jsonb) IS
'For the stripe.reconcile worker: compares Stripe''s succeeded charges (by PaymentIntent) and refunds created in the window with the ledger, records differences in ops.reconciliation_mismatches and as critical errors; returns {"run_id", "checked", "mismatches"}.';

CREATE OR REPLACE FUNCTION core.enqueue_reconciliation()
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- The daily cron job: reconcile yesterday (UTC), once per day.
DECLARE
    v_end timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
BEGIN
    RETURN jsonb_build_object('job_id', jobs.enqueue(
        'stripe.reconcile',
        jsonb_build_object('window_start', v_end - interval '1 day', 'window_end', v_end),
        'stripe.reconcile:' || to_char(v_end - interval '1 day', 'YYYY-MM-DD')
    ));
END;
$$;
