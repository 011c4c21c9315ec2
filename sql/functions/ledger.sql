-- The double-entry ledger (contract: "Ledger"). Every transaction is keyed on the Stripe
-- object that moved the money, so no object can be booked twice whatever announces it;
-- its lines sum to zero per currency (checked at commit by a deferred constraint
-- trigger, not only by the writer); nobody updates or deletes a ledger row.

CREATE OR REPLACE FUNCTION ledger.refuse_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'RX001', HINT = 'Correct a posting with a new, opposite transaction.';
END;
$$;

CREATE OR REPLACE FUNCTION ledger.check_balanced()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- Deferred to commit: the transaction of each new line has at least two lines, in its
-- own currency, summing to zero. SECURITY DEFINER because at commit it runs as the
-- session's role (e.g. a booking_app login), not as the api function that wrote the lines.
DECLARE
    v_bad record;
BEGIN
    SELECT t.txn_id, t.currency, count(l.line_id) AS lines, coalesce(sum(l.amount), 0) AS total,
           count(*) FILTER (WHERE l.currency <> t.currency) AS foreign_lines
    INTO v_bad
    FROM ledger.transactions AS t
    LEFT JOIN ledger.lines AS l ON l.txn_id = t.txn_id
    WHERE t.txn_id = NEW.txn_id
    GROUP BY t.txn_id, t.currency;
    IF v_bad.lines < 2 OR v_bad.total <> 0 OR v_bad.foreign_lines > 0 THEN
        RAISE EXCEPTION 'ledger transaction % is unbalanced', NEW.txn_id
            USING ERRCODE = 'RX001',
                  DETAIL = pg_catalog.format('%s lines summing to %s %s, %s in another currency',
                                             v_bad.lines, v_bad.total, v_bad.currency, v_bad.foreign_lines);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS transactions_append_only ON ledger.transactions;
CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON ledger.transactions
FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
DROP TRIGGER IF EXISTS transactions_no_truncate ON ledger.transactions;
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON ledger.transactions
FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
DROP TRIGGER IF EXISTS lines_append_only ON ledger.lines;
CREATE TRIGGER lines_append_only BEFORE UPDATE OR DELETE ON ledger.lines
FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
DROP TRIGGER IF EXISTS lines_no_truncate ON ledger.lines;
CREATE TRIGGER lines_no_truncate BEFORE TRUNCATE ON ledger.lines
FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
DROP TRIGGER IF EXISTS lines_balanced ON ledger.lines;
CREATE CONSTRAINT TRIGGER lines_balanced AFTER INSERT ON ledger.lines
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION ledger.check_balanced();
DROP TRIGGER IF EXISTS transactions_balanced ON ledger.transactions;
CREATE CONSTRAINT TRIGGER transactions_balanced AFTER INSERT ON ledger.transactions
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION ledger.check_balanced();

CREATE OR REPLACE FUNCTION ledger.post(
    p_kind text, p_stripe_object_id text, p_payment_intent_id text, p_booking_id uuid, p_amount bigint,
    p_currency text, p_debit text, p_credit text, p_stripe_event_id text DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
AS $$
-- Posts p_amount from p_credit to p_debit, once per (kind, Stripe object): returns the new
-- transaction id, or NULL when that object was already posted (a concurrent second post
-- waits for the first to commit, then finds it). RX001 if the earlier posting differs.
DECLARE
    v_txn_id bigint;
    v_existing ledger.transactions;
BEGIN
    PERFORM core.require_text(p_stripe_object_id, 'p_stripe_object_id', 255);
    PERFORM core.require_range(p_amount, 'p_amount', 1, 100000000000);
    PERFORM core.require(p_currency, 'p_currency');
    INSERT INTO ledger.transactions (
        kind, stripe_object_id, payment_intent_id, booking_id, currency, amount, stripe_event_id, correlation_id
    )
    VALUES (p_kind, p_stripe_object_id, p_payment_intent_id, p_booking_id, p_currency, p_amount, p_stripe_event_id,
            left(current_setting('app.correlation_id', true), 200))
    ON CONFLICT (kind, stripe_object_id) DO NOTHING
    RETURNING txn_id INTO v_txn_id;
    IF v_txn_id IS NULL THEN
        SELECT * INTO v_existing FROM ledger.transactions AS t
        WHERE t.kind = p_kind AND t.stripe_object_id = p_stripe_object_id;
        IF (v_existing.amount, v_existing.currency, v_existing.booking_id)
            IS DISTINCT FROM (p_amount, p_currency, p_booking_id) THEN
            RAISE EXCEPTION '% % was posted before with other figures', p_kind, p_stripe_object_id
                USING ERRCODE = 'RX001',
                      DETAIL = pg_catalog.format('posted %s %s for %s, now %s %s for %s', v_existing.amount,
                                                 v_existing.currency, v_existing.booking_id, p_amount, p_currency,
                                                 p_booking_id);
        END IF;
        RETURN NULL;
    END IF;
    INSERT INTO ledger.lines (txn_id, account, currency, amount)
    VALUES (v_txn_id, p_debit, p_currency, p_amount), (v_txn_id, p_credit, p_currency, -p_amount);
    RETURN v_txn_id;
END;
$$;

CREATE OR REPLACE FUNCTION ledger.post_charge(
    p_booking_id uuid, p_payment_intent_id text, p_amount bigint, p_currency text,
    p_unallocated boolean DEFAULT FALSE, p_stripe_event_id text DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
AS $$
    -- Money received for a booking (or, unallocated, money no booking can keep).
BEGIN
    RETURN (
        ledger.post(
            'charge', p_payment_intent_id, p_payment_intent_id, p_booking_id, p_amount, p_currency, 'cash_at_stripe',
            CASE WHEN p_unallocated THEN 'unallocated_receipts' ELSE 'booking_revenue' END, p_stripe_event_id
        )
    );
END;
$$;

CREATE OR REPLACE FUNCTION ledger.charge_is_unallocated(p_payment_intent_id text)
RETURNS boolean
LANGUAGE plpgsql
STABLE
AS $$
-- NULL when no charge was posted for the PaymentIntent.
BEGIN
    RETURN (
        SELECT bool_or(l.account = 'unallocated_receipts')
        FROM ledger.transactions AS t
        JOIN ledger.lines AS l ON l.txn_id = t.txn_id
        WHERE t.kind = 'charge' AND t.stripe_object_id = p_payment_intent_id
    );
END;
$$;

CREATE OR REPLACE FUNCTION ledger.post_refund(
    p_booking_id uuid, p_refund_id text, p_payment_intent_id text, p_amount bigint, p_currency text,
    p_stripe_event_id text DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
AS $$
    -- Money sent back, by refund object, from the account its charge went to.
BEGIN
    RETURN (
        ledger.post(
            'refund', p_refund_id, p_payment_intent_id, p_booking_id, p_amount, p_currency,
            CASE WHEN coalesce(ledger.charge_is_unallocated(p_payment_intent_id), FALSE)
                THEN 'unallocated_receipts' ELSE 'booking_revenue' END,
            'cash_at_stripe', p_stripe_event_id
        )
    );
END;
$$;

CREATE OR REPLACE FUNCTION ledger.post_dispute(
    p_booking_id uuid, p_dispute_id text, p_payment_intent_id text, p_amount bigint, p_currency text,
    p_stripe_event_id text DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
AS $$
    -- Stripe withdrew the disputed amount.
BEGIN
    RETURN (
        ledger.post(
            'dispute', p_dispute_id, p_payment_intent_id, p_booking_id, p_amount, p_currency, 'disputed_funds',
            'cash_at_stripe', p_stripe_event_id
        )
    );
END;
$$;

CREATE OR REPLACE FUNCTION ledger.post_dispute_reversal(
    p_booking_id uuid, p_dispute_id text, p_payment_intent_id text, p_amount bigint, p_currency text,
    p_stripe_event_id text DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
AS $$
    -- A won dispute: Stripe gave the amount back.
BEGIN
    RETURN (
        ledger.post(
            'dispute_reversal', p_dispute_id, p_payment_intent_id, p_booking_id, p_amount, p_currency, 'cash_at_stripe',
            'disputed_funds', p_stripe_event_id
        )
    );
END;
$$;
