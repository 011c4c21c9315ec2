-- The busiest tables' single-column rules as domains, and no foreign keys onto catalog
-- rows that every transaction references.
--
-- Why. PostgreSQL 15 reads every CHECK constraint of a table back from its stored text
-- and plans it again at each statement that writes the table (ExecConstraints ->
-- stringToNode), so each INSERT or UPDATE of a table with CHECKs paid that again: on
-- api.place_hold it was 11% of the server's CPU at 32 clients, and removing the holds
-- table's CHECKs gave place_hold 13% more throughput. A domain's checks are prepared
-- once per session in the type cache. A foreign key onto a catalog row that every
-- transaction references ('usd', 'confirmed', 'cash_at_stripe') locks that one row
-- FOR KEY SHARE in every transaction: concurrent lockers each create a new MultiXact and
-- write WAL for the lock. The domains below list those values instead; the catalog
-- tables stay, and tests/sql/test_migrations.py checks that both agree.
--
-- What a DBA sees: a bad value is still SQLSTATE 23514 (check_violation), naming the
-- domain's constraint instead of the table's. The rules that tie two columns together
-- (an open hold has no ended_at, a booked hold names its booking, an event waiting for
-- a retry has a retry time) are now watched by ops.broken_rows, which must stay empty;
-- every state change that could break them is made by one of the functions in
-- sql/functions/, and the tests assert the view is empty after their concurrent runs.
--
-- Locks: each ALTER COLUMN TYPE takes an ACCESS EXCLUSIVE lock on its table and rewrites
-- it (PostgreSQL 15 rewrites when the new type is a domain with checks). Every ops view
-- is dropped here; sql/migrate.sh re-applies all repeatables (views included) after any
-- versioned migration.

DO $$
DECLARE
    v_view record;
BEGIN
    FOR v_view IN SELECT schemaname, viewname FROM pg_views WHERE schemaname = 'ops' LOOP
        EXECUTE format('DROP VIEW IF EXISTS %I.%I CASCADE', v_view.schemaname, v_view.viewname);
    END LOOP;
END;
$$;

-- Shared shapes.
CREATE DOMAIN core.text_1_200 AS text CHECK (length(VALUE) BETWEEN 1 AND 200);
CREATE DOMAIN core.text_1_255 AS text CHECK (length(VALUE) BETWEEN 1 AND 255);
CREATE DOMAIN core.text_0_200 AS text CHECK (length(VALUE) <= 200);
CREATE DOMAIN core.text_0_255 AS text CHECK (length(VALUE) <= 255);
CREATE DOMAIN core.text_0_1000 AS text CHECK (length(VALUE) <= 1000);
CREATE DOMAIN core.text_0_2000 AS text CHECK (length(VALUE) <= 2000);
CREATE DOMAIN core.json_object AS jsonb CHECK (jsonb_typeof(VALUE) = 'object');
CREATE DOMAIN core.count AS int CHECK (VALUE >= 0);
CREATE DOMAIN core.minor_units AS bigint CHECK (VALUE >= 0);
-- A lowercase ISO 4217 code; core.currencies lists the ones inventories may use.
CREATE DOMAIN core.currency_code AS text CHECK (VALUE ~ '^[a-z]{3}$');

-- Holds and buckets.
CREATE DOMAIN booking.hold_status AS text
CHECK (VALUE IN ('live', 'booked', 'converted', 'released', 'expired'));
CREATE DOMAIN booking.hold_quantity AS int CHECK (VALUE BETWEEN 1 AND 100);
CREATE DOMAIN booking.extension_count AS int CHECK (VALUE BETWEEN 0 AND 10);

ALTER TABLE booking.holds
DROP CONSTRAINT check_holds_quantity,
DROP CONSTRAINT check_holds_holder,
DROP CONSTRAINT check_holds_hold_key,
DROP CONSTRAINT check_holds_status,
DROP CONSTRAINT check_holds_extensions_used,
DROP CONSTRAINT check_holds_ended,
DROP CONSTRAINT check_holds_booked;
ALTER TABLE booking.holds
ALTER COLUMN quantity TYPE booking.hold_quantity,
ALTER COLUMN holder TYPE core.text_1_200,
ALTER COLUMN hold_key TYPE core.text_1_255,
ALTER COLUMN status TYPE booking.hold_status,
ALTER COLUMN extensions_used TYPE booking.extension_count;

-- 'sold' becomes a counter spread over the buckets: a payment adds its units to any
-- bucket nobody else has locked, and a bucket's share may go below zero when units go
-- back through another bucket. Only the sum per inventory means anything.
ALTER TABLE booking.inventory_buckets
DROP CONSTRAINT check_inventory_buckets_free,
DROP CONSTRAINT check_inventory_buckets_sold;
ALTER TABLE booking.inventory_buckets
ALTER COLUMN free TYPE core.count;
COMMENT ON COLUMN booking.inventory_buckets.sold IS
'This bucket''s share of the units sold (a payment adds to any bucket free of locks); may be negative, only the sum per inventory means anything.';

-- Bookings and their history.
CREATE DOMAIN booking.booking_status AS text
CHECK (VALUE IN (
    'pending_payment', 'payment_failed', 'confirmed', 'expired', 'cancelled', 'refund_pending',
    'partially_refunded', 'refunded', 'disputed'
));
CREATE DOMAIN booking.row_version AS int CHECK (VALUE >= 1);

ALTER TABLE booking.bookings
DROP CONSTRAINT check_bookings_amount,
DROP CONSTRAINT check_bookings_holder,
DROP CONSTRAINT check_bookings_idempotency_key,
DROP CONSTRAINT check_bookings_metadata,
DROP CONSTRAINT check_bookings_payment_intent_id,
DROP CONSTRAINT check_bookings_version,
DROP CONSTRAINT bookings_status_fkey,
-- The currency comes from the inventory, whose own key onto core.currencies stays.
DROP CONSTRAINT bookings_currency_fkey;
ALTER TABLE booking.bookings
ALTER COLUMN amount TYPE core.minor_units,
ALTER COLUMN holder TYPE core.text_1_200,
ALTER COLUMN idempotency_key TYPE core.text_1_255,
ALTER COLUMN metadata TYPE core.json_object,
ALTER COLUMN payment_intent_id TYPE core.text_1_255,
ALTER COLUMN version TYPE booking.row_version,
ALTER COLUMN status TYPE booking.booking_status,
ALTER COLUMN currency TYPE core.currency_code;

ALTER TABLE booking.booking_history
DROP CONSTRAINT check_booking_history_detail;
ALTER TABLE booking.booking_history
ALTER COLUMN detail TYPE core.text_0_1000;

-- The ledger.
CREATE DOMAIN ledger.txn_kind AS text CHECK (VALUE IN ('charge', 'refund', 'dispute', 'dispute_reversal'));
CREATE DOMAIN ledger.account_name AS text
CHECK (VALUE IN ('cash_at_stripe', 'booking_revenue', 'unallocated_receipts', 'disputed_funds'));
CREATE DOMAIN ledger.positive_amount AS bigint CHECK (VALUE > 0);
CREATE DOMAIN ledger.nonzero_amount AS bigint CHECK (VALUE <> 0);

ALTER TABLE ledger.transactions
DROP CONSTRAINT check_transactions_amount,
DROP CONSTRAINT check_transactions_kind,
DROP CONSTRAINT check_transactions_object,
DROP CONSTRAINT transactions_currency_fkey;
ALTER TABLE ledger.transactions
ALTER COLUMN amount TYPE ledger.positive_amount,
ALTER COLUMN kind TYPE ledger.txn_kind,
ALTER COLUMN stripe_object_id TYPE core.text_1_255,
ALTER COLUMN currency TYPE core.currency_code;

-- A line's currency is its transaction's (checked at commit by ledger.check_balanced).
ALTER TABLE ledger.lines
DROP CONSTRAINT check_lines_amount,
DROP CONSTRAINT lines_account_fkey,
DROP CONSTRAINT lines_currency_fkey;
ALTER TABLE ledger.lines
ALTER COLUMN amount TYPE ledger.nonzero_amount,
ALTER COLUMN account TYPE ledger.account_name,
ALTER COLUMN currency TYPE core.currency_code;

-- Jobs.
CREATE DOMAIN jobs.job_kind AS text
CHECK (VALUE IN ('email.booking_confirmed', 'stripe.refund', 'stripe.reconcile', 'alert.notify', 'bench.noop'));
CREATE DOMAIN jobs.job_status AS text CHECK (VALUE IN ('queued', 'running', 'done', 'failed', 'dead'));
CREATE DOMAIN jobs.max_attempts AS int CHECK (VALUE BETWEEN 1 AND 100);

ALTER TABLE jobs.jobs
DROP CONSTRAINT check_jobs_attempts,
DROP CONSTRAINT check_jobs_dedupe_key,
DROP CONSTRAINT check_jobs_kind,
DROP CONSTRAINT check_jobs_payload,
DROP CONSTRAINT check_jobs_status;
ALTER TABLE jobs.jobs
ALTER COLUMN attempts TYPE core.count,
ALTER COLUMN max_attempts TYPE jobs.max_attempts,
ALTER COLUMN dedupe_key TYPE core.text_0_255,
ALTER COLUMN kind TYPE jobs.job_kind,
ALTER COLUMN payload TYPE core.json_object,
ALTER COLUMN status TYPE jobs.job_status;

-- Stripe events.
CREATE DOMAIN stripe.event_status AS text CHECK (VALUE IN ('processed', 'ignored', 'deferred', 'failed', 'dead'));

ALTER TABLE stripe.events
DROP CONSTRAINT check_events_attempts,
DROP CONSTRAINT check_events_correlation_id,
DROP CONSTRAINT check_events_event_id,
DROP CONSTRAINT check_events_last_error,
DROP CONSTRAINT check_events_retry_due,
DROP CONSTRAINT check_events_status,
DROP CONSTRAINT check_events_type;
ALTER TABLE stripe.events
ALTER COLUMN attempts TYPE core.count,
ALTER COLUMN correlation_id TYPE core.text_0_200,
ALTER COLUMN event_id TYPE core.text_1_255,
ALTER COLUMN last_error TYPE core.text_0_2000,
ALTER COLUMN status TYPE stripe.event_status,
ALTER COLUMN type TYPE core.text_1_255;
