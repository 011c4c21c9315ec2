-- Indexes for what the on-call console (GET /ops) and GET /metrics read (sql/views/ops_console.sql),
-- so that each panel answers from an index on a database with a million holds.
--
-- Locks: each CREATE INDEX takes a SHARE lock on its table (writes wait) while it builds;
-- sql/migrate.sh runs each migration in a transaction, so CONCURRENTLY is not available.
-- On a big production table, build the same index CONCURRENTLY by hand first (the name
-- matches, IF NOT EXISTS then skips it).

-- Holds placed per hour (chart). BRIN, not a btree: holds are the hottest insert path and
-- created_at follows the physical order of the rows, so a BRIN summary costs nothing per
-- insert and still narrows a one-hour count to a few block ranges.
CREATE INDEX IF NOT EXISTS holds_created_at_brin ON booking.holds USING brin (created_at);
-- Bookings created per hour (chart).
CREATE INDEX IF NOT EXISTS bookings_created_at_idx ON booking.bookings (created_at);
-- Payments and transitions in the last 7 or 30 days (ops.success_metrics).
CREATE INDEX IF NOT EXISTS booking_history_at_idx ON booking.booking_history (at);
-- Charges of the last 30 days (duplicate charges, PaymentIntents recorded).
CREATE INDEX IF NOT EXISTS transactions_posted_at_idx ON ledger.transactions (posted_at);
-- Alert jobs of the last 7 days (critical-alert latency); kind and created_at never change,
-- so the claim and complete updates stay HOT.
CREATE INDEX IF NOT EXISTS jobs_kind_created_idx ON jobs.jobs (kind, created_at);
-- Dead jobs (a gauge, an alert): few, but among many done ones.
CREATE INDEX IF NOT EXISTS jobs_dead_idx ON jobs.jobs (kind) WHERE status = 'dead';
-- Failed and dead Stripe events (a console panel, two gauges), among many processed ones.
CREATE INDEX IF NOT EXISTS events_failing_idx ON stripe.events (status, received_at)
WHERE status IN ('failed', 'dead');
