-- Least privilege, re-applied whenever any function or view changes (see sql/migrate.sh).
REVOKE ALL ON SCHEMA api, ops, core, stripe, booking, ledger, jobs, migrate FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA api, ops, core, stripe, booking, ledger, jobs, migrate FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA api, ops, core, stripe, booking, ledger, jobs, migrate FROM PUBLIC;

GRANT USAGE ON SCHEMA api TO booking_app;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA api TO booking_app;

GRANT USAGE ON SCHEMA ops TO booking_ops;
GRANT SELECT ON ALL TABLES IN SCHEMA ops TO booking_ops;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ops TO booking_ops;
