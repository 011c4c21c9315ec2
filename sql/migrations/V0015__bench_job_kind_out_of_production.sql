-- The bench.noop job kind leaves the jobs.job_kind domain: it was a benchmark's, and no
-- production code enqueues or does it. tests/bench/queue_bench.py now adds it to its own
-- bench database only (tests/bench/noop_worker.py).
--
-- A bench.noop job could only come from a benchmark run against this database, and it does
-- nothing: any there is removed, so that the shorter list holds for every row.
DELETE FROM jobs.jobs
WHERE kind = 'bench.noop';

-- As V0014 changed the domain: the old check is dropped and the new list added NOT VALID in
-- one transaction, so no moment accepts anything else; then VALIDATE checks the stored rows
-- against the shorter list (unlike V0014's longer one, it could refuse a row). Locks: the
-- domain's VALIDATE holds SHARE on jobs.jobs while it scans it (writes wait, reads go on),
-- as long as one pass over the table takes; the wait for the lock is bounded by
-- migrate.sh's lock_timeout, which rolls the whole file back and retries it.
-- squawk-ignore ban-drop-constraint
ALTER DOMAIN jobs.job_kind DROP CONSTRAINT job_kind_check;
-- squawk-ignore ban-alter-domain-with-add-constraint
ALTER DOMAIN jobs.job_kind ADD CONSTRAINT job_kind_check
CHECK (VALUE IN ('email.booking_confirmed', 'email.waitlist_offer', 'stripe.refund', 'stripe.reconcile',
                 'alert.notify')) NOT VALID;
ALTER DOMAIN jobs.job_kind VALIDATE CONSTRAINT job_kind_check;
