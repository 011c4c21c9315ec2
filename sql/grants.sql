-- Least privilege by duty (CONTRACT.md, Roles), re-applied whenever any function or view
-- changes (see sql/migrate.sh). Each api function is granted by name to the roles whose duty
-- it is, so a function added to api is callable by nobody until it is listed here, and
-- tests/sql/test_privileges.py fails until it is named in a duty list.
REVOKE ALL ON SCHEMA api, ops, core, stripe, booking, ledger, jobs, migrate FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA api, ops, core, stripe, booking, ledger, jobs, migrate FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA api, ops, core, stripe, booking, ledger, jobs, migrate FROM PUBLIC;
-- An earlier release granted every api function to booking_app: start from nothing.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA api FROM booking_app, booking_shim, booking_worker, booking_ops;

GRANT USAGE ON SCHEMA api TO booking_app, booking_shim, booking_worker;

-- Every duty: report an error, read health.
GRANT EXECUTE ON FUNCTION
    api.log_error(text, text, text, text, jsonb, text),
    api.health()
TO booking_app, booking_shim, booking_worker;

-- The generic idempotency records: application servers and the shim (POST /payment-intents).
GRANT EXECUTE ON FUNCTION
    api.idempotency_begin(text, text, text, jsonb, interval, interval),
    api.idempotency_complete(text, text, text, jsonb, int),
    api.idempotency_fail(text, text, text, text, boolean)
TO booking_app, booking_shim;

-- Application servers: inventory, holds, bookings, availability, refresh tokens.
GRANT EXECUTE ON FUNCTION
    api.create_inventory(text, int, bigint, text, interval, interval, int),
    api.set_capacity(uuid, int),
    api.availability(uuid),
    api.place_hold(uuid, int, text, text),
    api.extend_hold(uuid),
    api.release_hold(uuid),
    api.hold_status(uuid),
    api.create_booking(text, text, uuid[], jsonb),
    api.cancel_booking(uuid, text),
    api.get_booking(uuid),
    api.issue_refresh_token(text, bytea, interval),
    api.revoke_refresh_tokens(text),
    api.join_waitlist(uuid, int, text, text),
    api.waitlist_status(uuid),
    api.leave_waitlist(uuid),
    api.open_queue(uuid, timestamptz, int, interval),
    api.enter_queue(uuid, text),
    api.queue_status(uuid),
    api.place_hold_v2(uuid, int, text, text, uuid),
    api.cache_versions(text[]),
    api.bump_cache_version(text),
    api.catalog(text, int),
    api.set_unit_amount(uuid, bigint)
TO booking_app;

-- The webhook shim: Stripe's events, PaymentIntents, refresh-token rotation.
GRANT EXECUTE ON FUNCTION
    api.ingest_stripe_event(jsonb),
    api.ingest_stripe_events(jsonb, text[]),
    api.record_stripe_event_failure(jsonb, text, text),
    api.payment_intent_params(uuid),
    api.record_payment_intent(uuid, text, text, text),
    api.rotate_refresh_token(bytea, bytea)
TO booking_shim;

-- The job worker: the queue, refunds, reconciliation.
GRANT EXECUTE ON FUNCTION
    api.claim_jobs(text, text[], int, interval),
    api.complete_job(uuid, uuid, jsonb),
    api.complete_jobs(uuid[], uuid[], jsonb[]),
    api.fail_job(uuid, uuid, text, boolean),
    api.refunds_due(uuid, text),
    api.record_stripe_refund(jsonb),
    api.reconcile(timestamptz, timestamptz, jsonb)
TO booking_worker;

-- On-call: read the ops views, run the repair functions.
GRANT USAGE ON SCHEMA ops TO booking_ops;
GRANT SELECT ON ALL TABLES IN SCHEMA ops TO booking_ops;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ops TO booking_ops;
