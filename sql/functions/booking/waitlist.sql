-- The waitlist (contract: "On-sale fairness"). Tables and the capacity equation with
-- owed units: migrations/V0014.
--
-- Units that come back while entries wait are moved out of the buckets into
-- booking.waitlists.owed (booking.units_returned, called where units come back), then
-- handed out, whole and strictly in join order, as offer holds (booking.serve_waitlist).
-- Owed units are in no bucket, so no buyer's place_hold can take them. A hold that
-- expires frees nothing at that instant: its units are owed as soon as anyone reclaims
-- it (a buyer short of units, the sweeper, or waitlist_status), and until then
-- api.availability counts them as neither held nor available while entries wait.
--
-- Lock order (with holds.sql): hold rows, then bucket rows, then the waitlist row. A
-- transaction takes an inventory's waitlist row only after any bucket lock of that
-- inventory it will wait for, and never waits for one of its buckets while holding the
-- row; entry rows are taken only while holding the waitlist row.

CREATE OR REPLACE FUNCTION booking.make_offer(p_entry booking.waitlist_entries, p_inventory booking.inventory)
RETURNS uuid
LANGUAGE plpgsql
AS $$
-- The entry's offer: a hold of its quantity for its holder with the inventory's hold time
-- from now, and its e-mail job carrying the message (the worker reads no booking data).
-- The units are owed units the caller has already taken off the owed counter.
DECLARE
    v_hold_id uuid;
    v_expires_at timestamptz;
BEGIN
    INSERT INTO booking.holds AS h (inventory_id, bucket_no, quantity, holder, expires_at)
    VALUES (p_entry.inventory_id, 0, p_entry.quantity, p_entry.holder, clock_timestamp() + p_inventory.hold_ttl)
    RETURNING h.hold_id, h.expires_at INTO v_hold_id, v_expires_at;
    UPDATE booking.waitlist_entries
    SET status = 'offered', hold_id = v_hold_id, offered_at = clock_timestamp()
    WHERE entry_id = p_entry.entry_id;
    PERFORM jobs.enqueue(
        'email.waitlist_offer',
        jsonb_build_object(
            'entry_id', p_entry.entry_id, 'hold_id', v_hold_id, 'holder', p_entry.holder,
            'sku', p_inventory.sku, 'quantity', p_entry.quantity,
            'amount', p_inventory.unit_amount * p_entry.quantity, 'currency', p_inventory.currency,
            'expires_at', v_expires_at
        ),
        'waitlist_offer:' || p_entry.entry_id::text
    );
    RETURN v_hold_id;
END;
$$;

CREATE OR REPLACE FUNCTION booking.serve_waitlist(p_inventory_id uuid)
RETURNS int
LANGUAGE plpgsql
AS $$
-- Offers owed units to the waiting entries in join order, each whole; the first entry
-- that does not fit stops it (no later entry may pass it). The caller holds the
-- inventory's waitlist row. Returns the number of offers made.
DECLARE
    v_list booking.waitlists;
    v_inventory booking.inventory;
    v_entry booking.waitlist_entries;
    v_offers int := 0;
BEGIN
    SELECT * INTO v_list FROM booking.waitlists AS w WHERE w.inventory_id = p_inventory_id;
    IF v_list.waiting = 0 OR v_list.owed = 0 THEN
        RETURN 0;
    END IF;
    SELECT * INTO v_inventory FROM booking.inventory AS i WHERE i.inventory_id = p_inventory_id;
    LOOP
        SELECT * INTO v_entry
        FROM booking.waitlist_entries AS e
        WHERE e.inventory_id = p_inventory_id AND e.status = 'waiting'
        ORDER BY e.join_no
        LIMIT 1;
        EXIT WHEN NOT FOUND OR v_entry.quantity > v_list.owed;
        PERFORM booking.make_offer(v_entry, v_inventory);
        v_list.owed := v_list.owed - v_entry.quantity;
        v_list.waiting := v_list.waiting - 1;
        v_offers := v_offers + 1;
    END LOOP;
    IF v_offers > 0 THEN
        UPDATE booking.waitlists
        SET owed = v_list.owed, waiting = v_list.waiting
        WHERE inventory_id = p_inventory_id;
    END IF;
    RETURN v_offers;
END;
$$;

CREATE OR REPLACE FUNCTION booking.units_returned(p_returns booking.bucket_return[])
RETURNS void
LANGUAGE plpgsql
AS $$
-- Units returned to inventory X: serve the waitlist first. Called right after units went
-- back to buckets (whose locks the caller holds): for each inventory with waiting
-- entries, the units leave those buckets again for the owed counter and are offered.
-- An inventory that never had a waitlist costs one index probe.
DECLARE
    v_inventory record;
    v_bucket record;
    v_list booking.waitlists;
BEGIN
    IF cardinality(p_returns) = 0 OR NOT EXISTS (
        SELECT FROM booking.waitlists AS w
        WHERE w.inventory_id IN (SELECT r.inventory_id FROM unnest(p_returns) AS r)
    ) THEN
        RETURN;
    END IF;
    FOR v_inventory IN
        SELECT r.inventory_id, sum(r.units)::int AS units
        FROM unnest(p_returns) AS r
        GROUP BY r.inventory_id
        ORDER BY r.inventory_id
    LOOP
        -- Locked even when nobody waits: a join in progress may be about to wait, and it
        -- must find these units owed, not free.
        SELECT * INTO v_list FROM booking.waitlists AS w WHERE w.inventory_id = v_inventory.inventory_id FOR UPDATE;
        CONTINUE WHEN NOT FOUND OR v_list.waiting = 0 OR v_inventory.units <= 0;
        FOR v_bucket IN
            SELECT r.bucket_no, sum(r.units)::int AS units
            FROM unnest(p_returns) AS r
            WHERE r.inventory_id = v_inventory.inventory_id
            GROUP BY r.bucket_no
            ORDER BY r.bucket_no
        LOOP
            UPDATE booking.inventory_buckets
            SET free = free - v_bucket.units
            WHERE inventory_id = v_inventory.inventory_id AND bucket_no = v_bucket.bucket_no;
        END LOOP;
        UPDATE booking.waitlists SET owed = owed + v_inventory.units WHERE inventory_id = v_inventory.inventory_id;
        PERFORM booking.serve_waitlist(v_inventory.inventory_id);
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION booking.drain_owed(p_inventory_id uuid)
RETURNS void
LANGUAGE plpgsql
AS $$
-- Owed units nobody waits for any more (entries left, or an offer lapsed with nobody
-- behind it) go back to bucket 0. Called by the slow take path, which holds every bucket
-- of the inventory.
BEGIN
    IF NOT EXISTS (SELECT FROM booking.waitlists AS w WHERE w.inventory_id = p_inventory_id AND w.owed > 0) THEN
        RETURN;
    END IF;
    WITH drained AS (
        SELECT w.owed FROM booking.waitlists AS w
        WHERE w.inventory_id = p_inventory_id AND w.waiting = 0 AND w.owed > 0
        FOR UPDATE
    ), bucket AS (
        UPDATE booking.inventory_buckets AS b
        SET free = b.free + d.owed
        FROM drained AS d
        WHERE b.inventory_id = p_inventory_id AND b.bucket_no = 0
        RETURNING b.bucket_no
    )
    UPDATE booking.waitlists AS w
    SET owed = 0
    WHERE w.inventory_id = p_inventory_id AND EXISTS (SELECT FROM bucket);
END;
$$;

CREATE OR REPLACE FUNCTION booking.waitlist_waits(p_inventory_id uuid)
RETURNS boolean
LANGUAGE sql
STABLE
AS $$
    -- Whether entries wait for this inventory (as of this statement).
    SELECT EXISTS (SELECT FROM booking.waitlists AS w WHERE w.inventory_id = p_inventory_id AND w.waiting > 0);
$$;

CREATE OR REPLACE FUNCTION booking.catch_up_waitlist(p_inventory_id uuid)
RETURNS void
LANGUAGE plpgsql
AS $$
-- The latest moment an offer is made: reclaim the inventory's dead holds (their units
-- come back through booking.units_returned and are offered), then offer what is owed.
-- Takes bucket locks before the waitlist row, as everywhere.
BEGIN
    PERFORM booking.return_to_buckets(
        booking.end_holds(booking.dead_open_holds(p_inventory_id, 1000), 'expired')
    );
    PERFORM FROM booking.waitlists AS w WHERE w.inventory_id = p_inventory_id FOR UPDATE;
    PERFORM booking.serve_waitlist(p_inventory_id);
END;
$$;

CREATE OR REPLACE FUNCTION booking.entry_state(p_entry booking.waitlist_entries)
RETURNS TABLE (status text, hold_id uuid, offer_expires_at timestamptz)
LANGUAGE sql
STABLE
AS $$
    -- An offered entry's state is its hold's: live before its deadline 'offered', booked
    -- before its deadline or converted 'claimed', otherwise 'lapsed'.
    SELECT
        CASE
            WHEN p_entry.status <> 'offered' THEN p_entry.status::text
            WHEN h.status = 'converted' THEN 'claimed'
            WHEN h.status = 'booked' AND h.expires_at > clock_timestamp() THEN 'claimed'
            WHEN h.status = 'live' AND h.expires_at > clock_timestamp() THEN 'offered'
            ELSE 'lapsed'
        END,
        p_entry.hold_id,
        CASE WHEN p_entry.status = 'offered' THEN h.expires_at END
    FROM (SELECT 1) AS one
    LEFT JOIN booking.holds AS h ON h.hold_id = p_entry.hold_id;
$$;

-- ---------------------------------------------------------------------------------------
-- api

CREATE OR REPLACE FUNCTION api.join_waitlist(p_inventory_id uuid, p_quantity int, p_holder text, p_key text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_inventory booking.inventory;
    v_existing booking.waitlist_entries;
    v_list booking.waitlists;
    v_taken boolean := false;
    v_entry_id uuid;
BEGIN
    v_inventory := booking.inventory_for_request(p_inventory_id, p_quantity, p_holder, p_key, 'p_key');
    IF p_key IS NOT NULL THEN
        -- Joins with one (holder, key) run one at a time.
        PERFORM pg_advisory_xact_lock(hashtextextended(p_holder || E'\n' || p_key, 7262));
        SELECT * INTO v_existing FROM booking.waitlist_entries AS e WHERE e.holder = p_holder AND e.entry_key = p_key;
        IF FOUND THEN
            IF (v_existing.inventory_id, v_existing.quantity) IS DISTINCT FROM (p_inventory_id, p_quantity) THEN
                RAISE EXCEPTION 'waitlist key % was used for another request', p_key
                    USING ERRCODE = 'RI001',
                          DETAIL = pg_catalog.format('entry %s wants %s of inventory %s',
                                                     v_existing.entry_id, v_existing.quantity, v_existing.inventory_id);
            END IF;
            RETURN v_existing.entry_id;
        END IF;
    END IF;
    INSERT INTO booking.waitlists (inventory_id) VALUES (p_inventory_id) ON CONFLICT (inventory_id) DO NOTHING;
    IF FOUND THEN
        -- The inventory's first join. A return committing meanwhile saw no waitlist row
        -- and put its units in a bucket, where an outsider could take them while this
        -- entry waits. Wait for every bucket (in order, before the waitlist row: lock
        -- order) so that such a return has committed and the take below sees its units;
        -- a later return waits for this commit and then finds the row. Once per inventory.
        PERFORM FROM booking.inventory_buckets AS b
        WHERE b.inventory_id = p_inventory_id
        ORDER BY b.bucket_no
        FOR UPDATE;
    END IF;

    -- Nobody waits (as far as this snapshot shows) and the owed units are not enough:
    -- take the units from the buckets before locking the waitlist row (lock order). They
    -- become owed units below, so whoever waits by then gets them in turn. Not on an
    -- inventory behind a waiting room: its free units go to admitted tickets only, and
    -- the waitlist gets the units that come back.
    SELECT * INTO v_list FROM booking.waitlists AS w WHERE w.inventory_id = p_inventory_id;
    IF v_list.waiting = 0 AND v_list.owed < p_quantity AND NOT v_inventory.queued THEN
        BEGIN
            PERFORM booking.take_units(p_inventory_id, p_quantity, v_inventory.bucket_count);
            v_taken := true;
        EXCEPTION WHEN SQLSTATE 'RB001' THEN
            v_taken := false;
        END;
    END IF;

    SELECT * INTO v_list FROM booking.waitlists AS w WHERE w.inventory_id = p_inventory_id FOR UPDATE;
    INSERT INTO booking.waitlist_entries AS e (inventory_id, quantity, holder, entry_key)
    VALUES (p_inventory_id, p_quantity, p_holder, p_key)
    RETURNING e.entry_id INTO v_entry_id;
    UPDATE booking.waitlists
    SET waiting = waiting + 1, owed = owed + CASE WHEN v_taken THEN p_quantity ELSE 0 END
    WHERE inventory_id = p_inventory_id;
    PERFORM booking.serve_waitlist(p_inventory_id);
    RETURN v_entry_id;
END;
$$;
COMMENT ON FUNCTION api.join_waitlist(uuid, int, text, text) IS
'Puts p_holder on the inventory''s waitlist for p_quantity (1..100) units, served whole in join order; offered at once when the units are there and nobody waits. A repeated (holder, key) returns the same entry (RI001 for another inventory or quantity); RB005 unknown inventory.';

CREATE OR REPLACE FUNCTION api.waitlist_status(p_entry_id uuid)
RETURNS TABLE (status text, "position" int, hold_id uuid, offer_expires_at timestamptz)  -- noqa: RF06
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_entry booking.waitlist_entries;
    v_owed int;
BEGIN
    PERFORM core.require(p_entry_id, 'p_entry_id');
    SELECT * INTO v_entry FROM booking.waitlist_entries AS e WHERE e.entry_id = p_entry_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'waitlist entry % not found', p_entry_id USING ERRCODE = 'RB005';
    END IF;
    IF v_entry.status IN ('waiting', 'offered') THEN
        -- Make the offers that are due (a dead hold's units, owed units) before answering;
        -- most polls find nothing to do and take no lock.
        SELECT w.owed::int INTO v_owed FROM booking.waitlists AS w WHERE w.inventory_id = v_entry.inventory_id;
        IF v_owed > 0 OR EXISTS (
            SELECT FROM booking.holds AS h
            WHERE h.inventory_id = v_entry.inventory_id AND h.status IN ('live', 'booked')
              AND h.expires_at <= (SELECT clock_timestamp())
        ) THEN
            PERFORM booking.catch_up_waitlist(v_entry.inventory_id);
            SELECT * INTO v_entry FROM booking.waitlist_entries AS e WHERE e.entry_id = p_entry_id;
        END IF;
    END IF;
    RETURN QUERY
    SELECT
        s.status,
        CASE WHEN v_entry.status = 'waiting' THEN (
            SELECT count(*)::int + 1 FROM booking.waitlist_entries AS e
            WHERE e.inventory_id = v_entry.inventory_id AND e.status = 'waiting' AND e.join_no < v_entry.join_no
        ) END,
        s.hold_id,
        s.offer_expires_at
    FROM booking.entry_state(v_entry) AS s;
END;
$$;
COMMENT ON FUNCTION api.waitlist_status(uuid) IS
'status (waiting, offered, claimed, lapsed, left), position (waiting entries that joined before it + 1, NULL when not waiting), the offer''s hold and its deadline; makes any offer that is due first. RB005 unknown entry.';

CREATE OR REPLACE FUNCTION api.leave_waitlist(p_entry_id uuid)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- A waiting entry leaves; an offered one gives its live offer hold back (its units go to
-- the next entries). True if this call changed the entry; false once it has left, was
-- claimed or lapsed.
DECLARE
    v_entry booking.waitlist_entries;
    v_hold booking.holds;
    v_units int := 0;
    v_changed boolean := false;
BEGIN
    PERFORM core.require(p_entry_id, 'p_entry_id');
    SELECT * INTO v_entry FROM booking.waitlist_entries AS e WHERE e.entry_id = p_entry_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'waitlist entry % not found', p_entry_id USING ERRCODE = 'RB005';
    END IF;
    IF v_entry.hold_id IS NOT NULL THEN
        -- The hold row before the waitlist row (lock order).
        SELECT * INTO v_hold FROM booking.holds AS h WHERE h.hold_id = v_entry.hold_id FOR UPDATE;
    END IF;
    PERFORM FROM booking.waitlists AS w WHERE w.inventory_id = v_entry.inventory_id FOR UPDATE;
    SELECT * INTO v_entry FROM booking.waitlist_entries AS e WHERE e.entry_id = p_entry_id FOR UPDATE;
    IF v_entry.status = 'waiting' THEN
        UPDATE booking.waitlist_entries SET status = 'left', left_at = clock_timestamp() WHERE entry_id = p_entry_id;
        UPDATE booking.waitlists SET waiting = waiting - 1 WHERE inventory_id = v_entry.inventory_id;
        v_changed := true;
    ELSIF v_entry.status = 'offered' AND v_hold.status IN ('live', 'booked') THEN
        -- An open offer hold: its units go straight to the owed counter (no bucket: this
        -- transaction holds the waitlist row and must not wait for a bucket now).
        IF v_hold.status = 'live' AND v_hold.expires_at > clock_timestamp() THEN
            v_units := v_hold.quantity;
            PERFORM booking.end_holds(ARRAY[v_hold.hold_id], 'released');
            UPDATE booking.waitlist_entries SET status = 'left', left_at = clock_timestamp() WHERE entry_id = p_entry_id;
            v_changed := true;
        ELSIF v_hold.expires_at <= clock_timestamp() THEN
            v_units := v_hold.quantity;
            PERFORM booking.end_holds(ARRAY[v_hold.hold_id], 'expired');
        END IF;
        UPDATE booking.waitlists SET owed = owed + v_units WHERE inventory_id = v_entry.inventory_id;
    END IF;
    PERFORM booking.serve_waitlist(v_entry.inventory_id);
    RETURN v_changed;
END;
$$;
COMMENT ON FUNCTION api.leave_waitlist(uuid) IS
'Takes an entry off the waitlist; an offered entry''s live offer hold is released and its units offered to the next entries. True if this call changed it; RB005 unknown entry.';
