-- On-sale fairness (contract: "On-sale fairness: waitlist and waiting room").
--
-- The waitlist. While an inventory has waiting entries, units that come back do not go
-- to the buckets' 'free' (where any buyer could take them): they are owed to the entries,
-- counted in booking.waitlists.owed, and handed out as offer holds in join order. The
-- capacity equation becomes
--   capacity = sum(bucket.free) + sum(bucket.sold) + open holds + waitlists.owed
-- Lock order (sql/functions/waitlist.sql): a transaction takes an inventory's waitlist
-- row only after any bucket lock of that inventory it will ever wait for, and never waits
-- for one of its buckets while holding the row.
--
-- The waiting room. One settings row per queue, one row per visitor: entering writes a
-- new row and reads nothing shared, so entering a hot queue does not serialise. Positions
-- and admission times are computed when read (no job admits anyone).
--
-- Locks: new tables; ADD COLUMN with a constant default and ALTER DOMAIN ... NOT VALID
-- touch only the catalog (the domain's existing values are not rechecked; the new list
-- is a superset of the old one).

CREATE TABLE booking.waitlists (
    inventory_id uuid PRIMARY KEY REFERENCES booking.inventory (inventory_id),
    -- Entries with status 'waiting' (kept here so a return reads one row, not the list).
    waiting core.count NOT NULL DEFAULT 0,
    -- Units that came back while entries waited and are not yet an offer.
    owed core.count NOT NULL DEFAULT 0
);
COMMENT ON TABLE booking.waitlists IS
'One row per inventory that ever had a waitlist: how many entries wait and how many units are owed to them.';

-- A domain, not a table CHECK, for the reason in V0007 (a table's CHECKs are planned
-- again at every write); a new domain used by a new table locks nothing anyone uses.
-- squawk-ignore ban-create-domain-with-constraint
CREATE DOMAIN booking.waitlist_entry_status AS text CHECK (VALUE IN ('waiting', 'offered', 'left'));

CREATE SEQUENCE booking.waitlist_join_seq;

CREATE TABLE booking.waitlist_entries (
    entry_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    inventory_id uuid NOT NULL REFERENCES booking.waitlists (inventory_id),
    join_no bigint NOT NULL DEFAULT nextval('booking.waitlist_join_seq'),
    quantity booking.hold_quantity NOT NULL,
    holder core.text_1_200 NOT NULL,
    entry_key core.text_1_255,
    -- 'offered' is final in the table: whether the offer was claimed or lapsed is read
    -- from its hold (booked/converted, or expired/released/past its deadline).
    status booking.waitlist_entry_status NOT NULL DEFAULT 'waiting',
    hold_id uuid,
    joined_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    offered_at timestamptz,
    left_at timestamptz
);
CREATE INDEX waitlist_entries_waiting_idx ON booking.waitlist_entries (inventory_id, join_no)
WHERE status = 'waiting';
CREATE UNIQUE INDEX waitlist_entries_holder_key_idx ON booking.waitlist_entries (holder, entry_key)
WHERE entry_key IS NOT NULL;
CREATE INDEX waitlist_entries_inventory_idx ON booking.waitlist_entries (inventory_id, status);

-- The waiting room.
ALTER TABLE booking.inventory ADD COLUMN queued boolean NOT NULL DEFAULT FALSE;
COMMENT ON COLUMN booking.inventory.queued IS
'True once api.open_queue ran for it: holds then need an admitted queue ticket (api.place_hold_v2), RB006 otherwise.';

CREATE TABLE booking.queues (
    inventory_id uuid PRIMARY KEY REFERENCES booking.inventory (inventory_id),
    opens_at timestamptz NOT NULL,
    admit_per_minute int NOT NULL,
    admission_ttl interval NOT NULL,
    -- Orders the visitors who came before opens_at; secret: never returned by any function.
    seed bytea NOT NULL DEFAULT pg_catalog.decode(pg_catalog.md5(pg_catalog.gen_random_uuid()::text)
        || pg_catalog.md5(pg_catalog.gen_random_uuid()::text), 'hex'),
    CONSTRAINT check_queues_admit_per_minute CHECK (admit_per_minute BETWEEN 1 AND 1000000),
    CONSTRAINT check_queues_admission_ttl CHECK (admission_ttl > interval '0' AND admission_ttl <= interval '1 day')
);

-- Arrival order after opens_at: a sequence (cached per session, so concurrent visitors
-- do not queue on it).
CREATE SEQUENCE booking.queue_arrival_seq CACHE 32;

CREATE TABLE booking.queue_tickets (
    ticket_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    inventory_id uuid NOT NULL,  -- no foreign key: it would KEY SHARE-lock one hot row per visitor
    visitor core.text_1_200 NOT NULL,
    arrival_no bigint NOT NULL DEFAULT nextval('booking.queue_arrival_seq'),
    entered_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    pre_rank bytea NOT NULL,
    CONSTRAINT queue_tickets_visitor_key UNIQUE (inventory_id, visitor)
);
CREATE INDEX queue_tickets_arrival_idx ON booking.queue_tickets (inventory_id, entered_at, arrival_no);
CREATE INDEX queue_tickets_pre_rank_idx ON booking.queue_tickets (inventory_id, pre_rank);

-- The offer e-mail: the kinds' list gets one more value. The old check is dropped and
-- the longer list added NOT VALID in one transaction, so no moment accepts anything else,
-- and no existing row is scanned (each was valid under the shorter list).
-- squawk-ignore ban-drop-constraint
ALTER DOMAIN jobs.job_kind DROP CONSTRAINT job_kind_check;
-- squawk-ignore ban-alter-domain-with-add-constraint
ALTER DOMAIN jobs.job_kind ADD CONSTRAINT job_kind_check
CHECK (VALUE IN ('email.booking_confirmed', 'email.waitlist_offer', 'stripe.refund', 'stripe.reconcile',
                 'alert.notify', 'bench.noop')) NOT VALID;
