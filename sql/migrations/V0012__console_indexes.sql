-- Indexes for what the on-call console (GET /ops) and GET /metrics read (sql/views/ops_console.sql),
-- so that each panel answers from an index on a database with a million holds.
--
-- Locks: each CREATE INDEX takes a SHARE lock on its table (writes wait) while it builds;
-- sql/migrate.sh runs each migration in a transaction, so CONCURRENTLY is not available.
-- On a big production table, build the same index CONCURRENTLY by hand first (the name
-- matches, IF NOT EXISTS then skips it). Hence the squawk-ignore before each statement.

-- Holds placed per hour (chart). A btree: a BRIN index on created_at was tried and read
-- 250 block ranges an hour (8 ms an hour, 190 ms for the chart on a million holds), and
-- its ranges widen as ended holds move (their updates are not HOT) and purged space is
-- reused. The cost is one more index entry per place_hold.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS holds_created_at_idx ON booking.holds (created_at);
-- Units held per inventory (ops.holds_overview, the console's holds panel): the same index
-- as holds_open_inventory_deadline_idx with the quantity in it, so the sums are read from
-- the index (once the visibility map marks the pages) instead of one heap page per hold:
-- 81 ms for 20,500 open holds, 20,500 heap pages. It replaces that index (same keys, same
-- predicate: place_hold and availability plan on it the same way).
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS holds_open_inventory_deadline_qty_idx ON booking.holds (inventory_id, expires_at)
INCLUDE (quantity) WHERE status IN ('live', 'booked');
-- squawk-ignore require-concurrent-index-deletion
DROP INDEX IF EXISTS booking.holds_open_inventory_deadline_idx;
-- Bookings created per hour (chart).
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS bookings_created_at_idx ON booking.bookings (created_at);
-- Transitions caused by Stripe events in the last 7 days (late payments, events applied
-- twice: ops.success_metrics), read from the index alone.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS booking_history_stripe_at_idx ON booking.booking_history (at)
INCLUDE (stripe_event_id, booking_id, event, from_status) WHERE stripe_event_id IS NOT NULL;
-- Charges of the last 7 days (duplicate charges, PaymentIntents recorded).
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS transactions_posted_at_idx ON ledger.transactions (posted_at);
-- Alert jobs of the last 7 days (critical-alert latency), and jobs done in the last 24
-- hours (ops.job_queue) without reading every job ever done.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS jobs_alerts_created_idx ON jobs.jobs (created_at) WHERE kind = 'alert.notify';
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS jobs_created_idx ON jobs.jobs (created_at) INCLUDE (kind, status);
-- Dead jobs (a gauge, an alert): few, but among many done ones.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS jobs_dead_idx ON jobs.jobs (kind) WHERE status = 'dead';
-- Failed and dead Stripe events (a console panel, two gauges), among many processed ones.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX IF NOT EXISTS events_failing_idx ON stripe.events (status, received_at)
WHERE status IN ('failed', 'dead');
