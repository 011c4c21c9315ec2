-- Inventory and holds (contract: "Inventory and holds"). The invariant and the bucket
-- design are explained at the top of migrations/V0003__inventory_and_holds.sql.
--
-- Lock order, so that nothing here can deadlock: a transaction that waits for bucket rows
-- takes them in (inventory_id, bucket_no) order, and hold rows are only ever taken with
-- SKIP LOCKED by a transaction that holds bucket locks.

CREATE OR REPLACE FUNCTION booking.bucket_count_for(p_capacity int)
RETURNS smallint
LANGUAGE sql
IMMUTABLE
AS $$
    -- One bucket per 8 units, at most 64: more rows than concurrent buyers, so that SKIP
    -- LOCKED nearly always finds an idle one (measured: 16 buckets gave 2.3x the hot-row
    -- baseline at 32 clients, 64 gave 3x), few enough that a sold-out check reads little.
    SELECT least(64, greatest(1, p_capacity / 8))::smallint;
$$;

CREATE OR REPLACE FUNCTION booking.idle_bucket(p_inventory_id uuid)
RETURNS smallint
LANGUAGE plpgsql
AS $$
-- One of the inventory's buckets that no other transaction holds, now locked by this
-- one (or one it already held); NULL when every bucket is busy. Only the key is tested,
-- so the row it locks is always the one it returns: no stray lock is left behind.
-- (plpgsql: its plan is kept for the session, a SQL function's would be made per call.)
DECLARE
    v_bucket smallint;
BEGIN
    SELECT b.bucket_no INTO v_bucket
    FROM booking.inventory_buckets AS b
    WHERE b.inventory_id = p_inventory_id
    ORDER BY b.bucket_no
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    RETURN v_bucket;
END;
$$;

CREATE OR REPLACE FUNCTION booking.add_free(p_inventory_id uuid, p_units int)
RETURNS void
LANGUAGE plpgsql
AS $$
-- Spreads p_units (>= 0) evenly over the inventory's buckets; the caller holds their locks.
DECLARE
    v_count int;
BEGIN
    SELECT count(*)::int INTO v_count FROM booking.inventory_buckets WHERE inventory_id = p_inventory_id;
    UPDATE booking.inventory_buckets AS b
    SET free = b.free + p_units / v_count + CASE WHEN b.bucket_no < p_units % v_count THEN 1 ELSE 0 END
    WHERE b.inventory_id = p_inventory_id;
END;
$$;

CREATE OR REPLACE FUNCTION booking.lock_buckets(p_inventory_id uuid)
RETURNS void
LANGUAGE plpgsql
AS $$
-- Locks all of an inventory's buckets, in bucket order (the one order every waiter uses).
BEGIN
    PERFORM FROM booking.inventory_buckets AS b
    WHERE b.inventory_id = p_inventory_id
    ORDER BY b.bucket_no
    FOR UPDATE;
END;
$$;

CREATE OR REPLACE FUNCTION booking.end_holds(p_hold_ids uuid[], p_status text)
RETURNS booking.bucket_return[]
LANGUAGE plpgsql
AS $$
-- Ends the open holds among p_hold_ids (the caller has locked them) with p_status and
-- returns the units to give back, per bucket. Buckets are not touched here, so a caller
-- can gather returns and take bucket locks once, at the end, in order.
DECLARE
    v_returns booking.bucket_return[];
BEGIN
    WITH ended AS (
        UPDATE booking.holds AS h
        SET status = p_status, ended_at = clock_timestamp()
        WHERE h.hold_id = ANY(p_hold_ids) AND h.status IN ('live', 'booked')
        RETURNING h.inventory_id, h.bucket_no, h.quantity
    )
    SELECT array_agg(ROW(e.inventory_id, e.bucket_no, e.units)::booking.bucket_return)
    INTO v_returns
    FROM (
        SELECT ended.inventory_id, ended.bucket_no, sum(ended.quantity)::int AS units
        FROM ended
        GROUP BY ended.inventory_id, ended.bucket_no
    ) AS e;
    RETURN coalesce(v_returns, '{}');
END;
$$;

CREATE OR REPLACE FUNCTION booking.return_to_buckets(p_returns booking.bucket_return[])
RETURNS int
LANGUAGE plpgsql
AS $$
-- Gives units back to buckets, one row at a time in (inventory_id, bucket_no) order.
DECLARE
    v_row record;
    v_total int := 0;
BEGIN
    FOR v_row IN
        SELECT r.inventory_id, r.bucket_no, sum(r.units)::int AS units
        FROM unnest(p_returns) AS r
        GROUP BY r.inventory_id, r.bucket_no
        ORDER BY r.inventory_id, r.bucket_no
    LOOP
        UPDATE booking.inventory_buckets
        SET free = free + v_row.units
        WHERE inventory_id = v_row.inventory_id AND bucket_no = v_row.bucket_no;
        v_total := v_total + v_row.units;
    END LOOP;
    -- Units returned to these inventories: serve their waitlists first (waitlist.sql).
    PERFORM booking.units_returned(p_returns);
    RETURN v_total;
END;
$$;

CREATE OR REPLACE FUNCTION booking.dead_open_holds(p_inventory_id uuid, p_limit int)
RETURNS uuid[]
LANGUAGE sql
AS $$
    -- Open holds past their deadline (all inventories when p_inventory_id is NULL),
    -- oldest deadline first, locked; rows another transaction holds are skipped.
    SELECT coalesce(array_agg(d.hold_id), '{}')
    FROM (
        SELECT h.hold_id
        FROM booking.holds AS h
        WHERE h.status IN ('live', 'booked')
          AND h.expires_at <= (SELECT clock_timestamp())  -- an InitPlan: a value the index can use
          AND (p_inventory_id IS NULL OR h.inventory_id = p_inventory_id)
        ORDER BY h.expires_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ) AS d;
$$;

-- Taking units, three tiers: booking.take_units tries the buckets nobody is using,
-- booking.take_units_waiting_on_one_bucket then waits for one that has enough, and
-- booking.take_units_locking_every_bucket (below) locks them all. Earlier names:
DROP FUNCTION IF EXISTS booking.take_more_units(uuid, int);
DROP FUNCTION IF EXISTS booking.take_units_slowly(uuid, int);

CREATE OR REPLACE FUNCTION booking.take_units_locking_every_bucket(p_inventory_id uuid, p_quantity int)
RETURNS smallint
LANGUAGE plpgsql
AS $$
-- When no single unlocked bucket has p_quantity free: lock every bucket (in order),
-- reclaim the inventory's expired holds, and take the units from as many buckets as
-- needed. Returns the bucket the hold gives its units back to. RB001 when short.
DECLARE
    v_row record;
    v_left int := p_quantity;
    v_home smallint;
    v_free bigint;
    v_reclaimed int;
BEGIN
    PERFORM booking.lock_buckets(p_inventory_id);
    v_reclaimed := booking.return_to_buckets(
        booking.end_holds(booking.dead_open_holds(p_inventory_id, 10000), 'expired')
    );
    -- Units owed to a waitlist nobody waits on any more become takeable (waitlist.sql).
    PERFORM booking.drain_owed(p_inventory_id);
    SELECT sum(b.free) INTO v_free FROM booking.inventory_buckets AS b WHERE b.inventory_id = p_inventory_id;
    IF v_free < p_quantity THEN
        RAISE EXCEPTION 'not enough available: % requested, % available', p_quantity, v_free
            USING ERRCODE = 'RB001',
                  DETAIL = pg_catalog.format('inventory %s, reclaimed %s expired units', p_inventory_id, v_reclaimed);
    END IF;
    FOR v_row IN
        SELECT b.bucket_no, b.free FROM booking.inventory_buckets AS b
        WHERE b.inventory_id = p_inventory_id AND b.free > 0
        ORDER BY b.free DESC, b.bucket_no
    LOOP
        UPDATE booking.inventory_buckets
        SET free = free - least(v_row.free, v_left)
        WHERE inventory_id = p_inventory_id AND bucket_no = v_row.bucket_no;
        v_left := v_left - least(v_row.free, v_left);
        v_home := coalesce(v_home, v_row.bucket_no);
        EXIT WHEN v_left = 0;
    END LOOP;
    RETURN v_home;
END;
$$;

CREATE OR REPLACE FUNCTION booking.expire_hold_if_dead(p_hold booking.holds)
RETURNS boolean
LANGUAGE plpgsql
AS $$
-- For a locked open hold past its deadline: ends it as expired and gives its units back.
BEGIN
    IF p_hold.status IN ('live', 'booked') AND p_hold.expires_at <= clock_timestamp() THEN
        PERFORM booking.return_to_buckets(booking.end_holds(ARRAY[p_hold.hold_id], 'expired'));
        RETURN true;
    END IF;
    RETURN false;
END;
$$;

CREATE OR REPLACE FUNCTION booking.take_units_waiting_on_one_bucket(p_inventory_id uuid, p_units int)
RETURNS smallint
LANGUAGE plpgsql
AS $$
-- After a miss on idle buckets: wait for one bucket that has enough (one row, holding no
-- other bucket, so no deadlock; a stray lock from a failed recheck is released by the
-- subtransaction's rollback); else, unless sold out, the ordered slow path. Returns the
-- bucket the units came from (or the first of them); RB001 when there are not enough.
DECLARE
    v_pick smallint;
    v_bucket smallint;
    v_available int;
BEGIN
    BEGIN
        SELECT c.bucket_no INTO v_pick
        FROM booking.inventory_buckets AS c
        WHERE c.inventory_id = p_inventory_id AND c.free >= p_units
        ORDER BY random()
        LIMIT 1;
        UPDATE booking.inventory_buckets AS b
        SET free = b.free - p_units
        WHERE b.inventory_id = p_inventory_id AND b.bucket_no = v_pick AND b.free >= p_units
        RETURNING b.bucket_no INTO v_bucket;
        IF v_bucket IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'RB001';
        END IF;
        RETURN v_bucket;
    EXCEPTION WHEN SQLSTATE 'RB001' THEN
        NULL;
    END;
    -- Sold out as of this snapshot (dead holds counted as available): say so without
    -- queueing behind other buyers' bucket locks.
    SELECT a.available INTO v_available FROM booking.availability(p_inventory_id) AS a;
    IF v_available < p_units THEN
        RAISE EXCEPTION 'not enough available: % requested, % available', p_units, v_available
            USING ERRCODE = 'RB001';
    END IF;
    RETURN booking.take_units_locking_every_bucket(p_inventory_id, p_units);
END;
$$;

DROP FUNCTION IF EXISTS booking.take_units(uuid, int);
CREATE OR REPLACE FUNCTION booking.take_units(p_inventory_id uuid, p_units int, p_bucket_count int)
RETURNS smallint
LANGUAGE plpgsql
AS $$
-- Takes p_units from the inventory's buckets; returns the bucket they came from (or the
-- first of them); RB001 when there are not enough.
-- Fast path: the first bucket from a random starting point (then from 0) that nobody
-- else is using and that has enough (SKIP LOCKED), so that concurrent buyers spread out
-- and each reads a few bucket rows, not all of them. FOR UPDATE can lock a row whose
-- newer version then fails "free >= p_units" and keep that lock; such a stray lock,
-- taken out of order, would deadlock against the slow path's ordered locking, so the
-- attempt runs in a subtransaction and a miss is rolled back, which releases it.
DECLARE
    v_start int := floor(random() * p_bucket_count)::int;
    v_bucket smallint;
BEGIN
    BEGIN
        -- Buckets [start, last], then [0, start).
        FOR v_pass IN 0..1 LOOP
            UPDATE booking.inventory_buckets AS b
            SET free = b.free - p_units
            WHERE b.inventory_id = p_inventory_id
              AND b.bucket_no = (
                  SELECT c.bucket_no
                  FROM booking.inventory_buckets AS c
                  WHERE c.inventory_id = p_inventory_id AND c.free >= p_units
                    AND c.bucket_no >= CASE WHEN v_pass = 0 THEN v_start ELSE 0 END
                    AND c.bucket_no < CASE WHEN v_pass = 0 THEN p_bucket_count ELSE v_start END
                  ORDER BY c.bucket_no
                  LIMIT 1
                  FOR UPDATE SKIP LOCKED
              )
            RETURNING b.bucket_no INTO v_bucket;
            EXIT WHEN v_bucket IS NOT NULL OR v_start = 0;
        END LOOP;
        IF v_bucket IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'RB001';
        END IF;
        RETURN v_bucket;
    EXCEPTION WHEN SQLSTATE 'RB001' THEN
        NULL;
    END;
    RETURN booking.take_units_waiting_on_one_bucket(p_inventory_id, p_units);
END;
$$;

-- ---------------------------------------------------------------------------------------
-- api

CREATE OR REPLACE FUNCTION api.create_inventory(
    p_sku text, p_capacity int, p_unit_amount bigint, p_currency text,
    p_hold_ttl interval DEFAULT '15 minutes',
    p_extension interval DEFAULT '10 minutes',
    p_max_extensions int DEFAULT 1
)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_inventory booking.inventory;
BEGIN
    PERFORM core.require_text(p_sku, 'p_sku', 200);
    PERFORM core.require_range(p_capacity, 'p_capacity', 0, 10000000);
    PERFORM core.require_range(p_unit_amount, 'p_unit_amount', 0, 100000000000);
    PERFORM core.require_text(p_currency, 'p_currency', 3);
    IF NOT EXISTS (SELECT FROM core.currencies AS c WHERE c.code = p_currency) THEN
        RAISE EXCEPTION 'unknown currency %', p_currency
            USING ERRCODE = '22023', HINT = 'A lowercase ISO 4217 code that Stripe charges in, e.g. ''usd''.';
    END IF;
    PERFORM core.require_interval(p_hold_ttl, 'p_hold_ttl', interval '1 second', interval '1 day');
    PERFORM core.require_interval(p_extension, 'p_extension', interval '0', interval '1 day');
    PERFORM core.require_range(p_max_extensions, 'p_max_extensions', 0, 10);

    INSERT INTO booking.inventory AS i (
        sku, capacity, unit_amount, currency, hold_ttl, extension, max_extensions, bucket_count
    )
    VALUES (
        p_sku, p_capacity, p_unit_amount, p_currency, p_hold_ttl, p_extension, p_max_extensions,
        booking.bucket_count_for(p_capacity)
    )
    ON CONFLICT (sku) DO NOTHING
    RETURNING * INTO v_inventory;
    IF v_inventory.inventory_id IS NULL THEN
        -- The same sku again: the same answer for the same request, RI001 for another.
        SELECT * INTO v_inventory FROM booking.inventory AS i WHERE i.sku = p_sku;
        IF (v_inventory.unit_amount, v_inventory.currency, v_inventory.hold_ttl, v_inventory.extension,
            v_inventory.max_extensions)
            IS DISTINCT FROM (p_unit_amount, p_currency, p_hold_ttl, p_extension, p_max_extensions) THEN
            RAISE EXCEPTION 'inventory % already exists with other settings', p_sku
                USING ERRCODE = 'RI001', HINT = 'Use api.set_capacity to change its capacity.';
        END IF;
        RETURN v_inventory.inventory_id;
    END IF;
    INSERT INTO booking.inventory_buckets (inventory_id, bucket_no, free)
    SELECT v_inventory.inventory_id, n, 0 FROM generate_series(0, v_inventory.bucket_count - 1) AS n;
    PERFORM booking.add_free(v_inventory.inventory_id, p_capacity);
    RETURN v_inventory.inventory_id;
END;
$$;
COMMENT ON FUNCTION api.create_inventory(text, int, bigint, text, interval, interval, int) IS
'Creates a sellable pool (capacity, unit price in minor units, currency, hold TTL, extension length and limit); returns its id. Idempotent on sku (RI001 when the same sku comes with other settings).';

CREATE OR REPLACE FUNCTION api.set_capacity(p_inventory_id uuid, p_capacity int)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_inventory booking.inventory;
    v_delta int;
    v_free bigint;
    v_want smallint;
    v_row record;
BEGIN
    PERFORM core.require(p_inventory_id, 'p_inventory_id');
    PERFORM core.require_range(p_capacity, 'p_capacity', 0, 10000000);
    -- The inventory row first (it serialises capacity changes), then every bucket in order.
    SELECT * INTO v_inventory FROM booking.inventory AS i WHERE i.inventory_id = p_inventory_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'inventory % not found', p_inventory_id USING ERRCODE = 'RB005';
    END IF;
    PERFORM booking.lock_buckets(p_inventory_id);
    PERFORM booking.return_to_buckets(
        booking.end_holds(booking.dead_open_holds(p_inventory_id, 100000), 'expired')
    );
    v_delta := p_capacity - v_inventory.capacity;
    IF v_delta > 0 THEN
        v_want := booking.bucket_count_for(p_capacity);
        IF v_want > v_inventory.bucket_count THEN
            INSERT INTO booking.inventory_buckets (inventory_id, bucket_no, free)
            SELECT p_inventory_id, n, 0 FROM generate_series(v_inventory.bucket_count, v_want - 1) AS n;
        END IF;
        PERFORM booking.add_free(p_inventory_id, v_delta);
        -- Added capacity is units coming back too: the waitlist first (waitlist.sql).
        PERFORM booking.units_returned(ARRAY(
            -- The shares booking.add_free just gave each bucket.
            SELECT ROW(p_inventory_id, c.n, v_delta / c.buckets + CASE WHEN c.n < v_delta % c.buckets THEN 1 ELSE 0 END
                   )::booking.bucket_return
            FROM (
                SELECT n, greatest(v_want, v_inventory.bucket_count)::int AS buckets
                FROM generate_series(0, greatest(v_want, v_inventory.bucket_count) - 1) AS n
            ) AS c
        ));
        UPDATE booking.inventory
        SET capacity = p_capacity, bucket_count = greatest(bucket_count, v_want)
        WHERE inventory_id = p_inventory_id;
    ELSIF v_delta < 0 THEN
        SELECT sum(b.free) INTO v_free FROM booking.inventory_buckets AS b WHERE b.inventory_id = p_inventory_id;
        IF v_free < -v_delta THEN
            RAISE EXCEPTION 'capacity % is below what is sold plus held (%)', p_capacity, v_inventory.capacity - v_free
                USING ERRCODE = 'RB001';
        END IF;
        FOR v_row IN
            SELECT b.bucket_no, b.free FROM booking.inventory_buckets AS b
            WHERE b.inventory_id = p_inventory_id AND b.free > 0
            ORDER BY b.bucket_no
        LOOP
            EXIT WHEN v_delta = 0;
            UPDATE booking.inventory_buckets
            SET free = free - least(v_row.free, -v_delta)
            WHERE inventory_id = p_inventory_id AND bucket_no = v_row.bucket_no;
            v_delta := v_delta + least(v_row.free, -v_delta);
        END LOOP;
        UPDATE booking.inventory SET capacity = p_capacity WHERE inventory_id = p_inventory_id;
    END IF;
END;
$$;
COMMENT ON FUNCTION api.set_capacity(uuid, int) IS
'Sets an inventory''s capacity; RB001 if it would fall below what is sold plus live holds, RB005 unknown inventory.';

CREATE OR REPLACE FUNCTION booking.stock(p_inventory_id uuid)
RETURNS TABLE (sold bigint, free bigint, dead_units bigint, owed int, waits boolean)
LANGUAGE sql
STABLE
AS $$
    -- What api.availability and api.catalog count, in one place: the bucket sums, the
    -- units of open holds already past their deadline (dead, not yet swept) and the
    -- waitlist's owed units. Reads at most 64 bucket rows and the unswept dead holds,
    -- never the live ones. One SELECT, so the planner inlines it into its caller.
    SELECT b.sold, b.free, d.units, w.owed, w.waits
    FROM (
        SELECT coalesce(sum(x.free), 0) AS free, coalesce(sum(x.sold), 0) AS sold
        FROM booking.inventory_buckets AS x WHERE x.inventory_id = p_inventory_id
    ) AS b
    CROSS JOIN (
        SELECT coalesce(sum(h.quantity), 0) AS units
        FROM booking.holds AS h
        WHERE h.inventory_id = p_inventory_id
          AND h.status IN ('live', 'booked')
          AND h.expires_at <= (SELECT clock_timestamp())  -- an InitPlan: indexable
    ) AS d
    CROSS JOIN (
        SELECT coalesce(max(x.owed), 0)::int AS owed, coalesce(bool_or(x.waiting > 0), false) AS waits
        FROM booking.waitlists AS x WHERE x.inventory_id = p_inventory_id
    ) AS w;
$$;

CREATE OR REPLACE FUNCTION booking.available_units(p_free bigint, p_dead_units bigint, p_owed int, p_waits boolean)
RETURNS int
LANGUAGE sql
IMMUTABLE
AS $$
    -- What a new buyer could take now (of booking.stock): free units, plus dead holds' and
    -- owed units unless entries wait (then those are theirs: waitlist.sql).
    SELECT (p_free + CASE WHEN p_waits THEN 0 ELSE p_dead_units + p_owed END)::int;
$$;

CREATE OR REPLACE FUNCTION booking.availability(p_inventory_id uuid)
RETURNS TABLE (capacity int, sold int, held int, available int)
LANGUAGE sql
STABLE
AS $$
    -- One statement, one snapshot (booking.stock); no row for an unknown inventory.
    SELECT
        i.capacity,
        s.sold::int,
        (i.capacity - s.sold - s.free - s.dead_units - s.owed)::int,
        booking.available_units(s.free, s.dead_units, s.owed, s.waits)
    FROM booking.inventory AS i
    CROSS JOIN LATERAL booking.stock(i.inventory_id) AS s
    WHERE i.inventory_id = p_inventory_id;
$$;

CREATE OR REPLACE FUNCTION api.availability(p_inventory_id uuid)
RETURNS TABLE (capacity int, sold int, held int, available int)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM core.require(p_inventory_id, 'p_inventory_id');
    RETURN QUERY SELECT a.capacity, a.sold, a.held, a.available FROM booking.availability(p_inventory_id) AS a;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'inventory % not found', p_inventory_id USING ERRCODE = 'RB005';
    END IF;
END;
$$;
COMMENT ON FUNCTION api.availability(uuid) IS
'capacity, sold, held (live or booked holds before their deadline) and available, exact at the moment of the call; RB005 unknown inventory.';

CREATE OR REPLACE FUNCTION booking.inventory_for_request(
    p_inventory_id uuid, p_quantity int, p_holder text, p_key text, p_key_name text
)
RETURNS booking.inventory
LANGUAGE plpgsql
STABLE
AS $$
-- A buyer's request for units (api.place_hold, api.join_waitlist), checked: 22004/22023/22001
-- for a missing or bad inventory id, quantity (1 to 100), holder or key (named p_key_name
-- in the message), RB005 for an unknown inventory; else the inventory's row.
DECLARE
    v_inventory booking.inventory;
BEGIN
    PERFORM core.require(p_inventory_id, 'p_inventory_id');
    PERFORM core.require_range(p_quantity, 'p_quantity', 1, 100);
    PERFORM core.require_text(p_holder, 'p_holder', 200);
    IF p_key IS NOT NULL THEN
        PERFORM core.require_text(p_key, p_key_name, 255);
    END IF;
    SELECT * INTO v_inventory FROM booking.inventory AS i WHERE i.inventory_id = p_inventory_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'inventory % not found', p_inventory_id USING ERRCODE = 'RB005';
    END IF;
    RETURN v_inventory;
END;
$$;

CREATE OR REPLACE FUNCTION api.place_hold(
    p_inventory_id uuid, p_quantity int, p_holder text, p_hold_key text DEFAULT NULL
)
RETURNS TABLE (hold_id uuid, expires_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- Custom plans were re-planned on every call (a quarter of the CPU at 32 clients); the
-- generic plans are the right ones for these key lookups.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_inventory booking.inventory;
    v_existing booking.holds;
    v_needed int := p_quantity;
    v_home smallint;
    v_bucket smallint;
BEGIN
    v_inventory := booking.inventory_for_request(p_inventory_id, p_quantity, p_holder, p_hold_key, 'p_hold_key');
    IF v_inventory.queued THEN
        -- Sold through a waiting room: an admitted ticket (api.place_hold_v2) or RB006.
        PERFORM booking.require_admission(
            p_inventory_id, p_holder, nullif(current_setting('booking.queue_ticket', true), '')::uuid);
    END IF;

    IF p_hold_key IS NOT NULL THEN
        -- Requests with one (holder, key) run one at a time; others are not slowed.
        PERFORM pg_advisory_xact_lock(hashtextextended(p_holder || E'\n' || p_hold_key, 7261));
        SELECT * INTO v_existing FROM booking.holds AS h
        WHERE h.holder = p_holder AND h.hold_key = p_hold_key AND h.status IN ('live', 'booked')
        FOR UPDATE;
        IF FOUND AND v_existing.expires_at > clock_timestamp() THEN
            IF (v_existing.inventory_id, v_existing.quantity) IS DISTINCT FROM (p_inventory_id, p_quantity) THEN
                RAISE EXCEPTION 'hold key % was used for another request', p_hold_key
                    USING ERRCODE = 'RI001',
                          DETAIL = pg_catalog.format('hold %s holds %s of inventory %s',
                                                     v_existing.hold_id, v_existing.quantity, v_existing.inventory_id);
            END IF;
            RETURN QUERY SELECT v_existing.hold_id, v_existing.expires_at;
            RETURN;
        ELSIF FOUND AND v_existing.inventory_id = p_inventory_id AND NOT booking.waitlist_waits(p_inventory_id) THEN
            -- The key's hold is dead: end it, and hand its units (nobody else can reclaim
            -- them while we hold its row) straight to the new hold, with no bucket lock.
            PERFORM booking.end_holds(ARRAY[v_existing.hold_id], 'expired');
            -- Units counted as available (the hold was dead) become held with no bucket
            -- crossing 0: the sold-out state may change, so announce at commit.
            PERFORM booking.note_cache_change(p_inventory_id, p_force => true);
            v_home := v_existing.bucket_no;
            v_needed := greatest(p_quantity - v_existing.quantity, 0);
            IF v_existing.quantity > p_quantity THEN
                PERFORM booking.return_to_buckets(ARRAY[
                    ROW(p_inventory_id, v_existing.bucket_no, v_existing.quantity - p_quantity)::booking.bucket_return
                ]);
            END IF;
        ELSIF FOUND THEN
            -- Dead, for another inventory: give its units back before touching ours.
            PERFORM booking.expire_hold_if_dead(v_existing);
        END IF;
    END IF;

    IF v_needed > 0 THEN
        v_bucket := booking.take_units(p_inventory_id, v_needed, v_inventory.bucket_count);
        v_home := coalesce(v_home, v_bucket);
    END IF;

    RETURN QUERY
    INSERT INTO booking.holds AS h (inventory_id, bucket_no, quantity, holder, hold_key, expires_at, unit_amount)
    VALUES (p_inventory_id, v_home, p_quantity, p_holder, p_hold_key, clock_timestamp() + v_inventory.hold_ttl,
            v_inventory.unit_amount)
    RETURNING h.hold_id, h.expires_at;
END;
$$;
COMMENT ON FUNCTION api.place_hold(uuid, int, text, text) IS
'Holds p_quantity (1..100) units for p_holder until the inventory''s hold TTL passes; returns (hold_id, expires_at). RB001 not enough available (expired holds are reclaimed first), RB005 unknown inventory; a repeated (holder, hold_key) returns the same open hold (RI001 if it was for another inventory or quantity).';

CREATE OR REPLACE FUNCTION api.extend_hold(p_hold_id uuid)
RETURNS timestamptz
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_expires_at timestamptz;
    v_hold booking.holds;
BEGIN
    PERFORM core.require(p_hold_id, 'p_hold_id');
    UPDATE booking.holds AS h
    SET expires_at = h.expires_at + i.extension, extensions_used = h.extensions_used + 1
    FROM booking.inventory AS i
    WHERE h.hold_id = p_hold_id
      AND i.inventory_id = h.inventory_id
      AND h.status = 'live'
      AND h.expires_at > clock_timestamp()
      AND h.extensions_used < i.max_extensions
    RETURNING h.expires_at INTO v_expires_at;
    IF FOUND THEN
        RETURN v_expires_at;
    END IF;
    SELECT * INTO v_hold FROM booking.holds AS h WHERE h.hold_id = p_hold_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'hold % not found', p_hold_id USING ERRCODE = 'RB005';
    END IF;
    IF v_hold.status <> 'live' OR v_hold.expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION 'hold % is not live', p_hold_id
            USING ERRCODE = 'RB002',
                  DETAIL = pg_catalog.format('status %s, expires_at %s', v_hold.status, v_hold.expires_at);
    END IF;
    RAISE EXCEPTION 'hold % has no extensions left', p_hold_id
        USING ERRCODE = 'RB003', DETAIL = pg_catalog.format('%s used', v_hold.extensions_used);
END;
$$;
COMMENT ON FUNCTION api.extend_hold(uuid) IS
'Pushes a live hold''s deadline back by the inventory''s extension; returns the new expires_at. RB002 not live, RB003 no extensions left, RB005 unknown hold.';

CREATE OR REPLACE FUNCTION api.release_hold(p_hold_id uuid)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_hold booking.holds;
BEGIN
    PERFORM core.require(p_hold_id, 'p_hold_id');
    SELECT * INTO v_hold FROM booking.holds AS h WHERE h.hold_id = p_hold_id FOR UPDATE;
    IF NOT FOUND OR booking.expire_hold_if_dead(v_hold) OR v_hold.status <> 'live' THEN
        RETURN false;
    END IF;
    PERFORM booking.return_to_buckets(booking.end_holds(ARRAY[p_hold_id], 'released'));
    RETURN true;
END;
$$;
COMMENT ON FUNCTION api.release_hold(uuid) IS
'Releases a live hold and returns its units; true if this call released it, false if it was already not live (or is unknown). Never an error for a non-NULL id.';

CREATE OR REPLACE FUNCTION api.hold_status(p_hold_id uuid)
RETURNS TABLE (status text, quantity int, expires_at timestamptz, seconds_left int, extensions_left int)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM core.require(p_hold_id, 'p_hold_id');
    RETURN QUERY
    SELECT
        s.status::text,
        s.quantity::int,
        s.expires_at,
        CASE WHEN s.status IN ('live', 'booked')
            THEN ceil(extract(EPOCH FROM s.expires_at - s.at))::int ELSE 0 END,
        CASE WHEN s.status = 'live' THEN greatest(s.max_extensions - s.extensions_used, 0) ELSE 0 END
    FROM (
        SELECT
            CASE WHEN h.status IN ('live', 'booked') AND h.expires_at <= c.at THEN 'expired' ELSE h.status::text END AS status,
            h.quantity, h.expires_at, h.extensions_used, i.max_extensions, c.at
        FROM booking.holds AS h
        JOIN booking.inventory AS i ON i.inventory_id = h.inventory_id
        CROSS JOIN (SELECT clock_timestamp() AS at) AS c
        WHERE h.hold_id = p_hold_id
    ) AS s;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'hold % not found', p_hold_id USING ERRCODE = 'RB005';
    END IF;
END;
$$;
COMMENT ON FUNCTION api.hold_status(uuid) IS
'status (live, booked, converted, released, expired: a hold past its deadline is expired whether or not it was swept), quantity, expires_at, seconds_left (for a checkout timer), extensions_left; RB005 unknown hold.';

-- ---------------------------------------------------------------------------------------
-- cron jobs

-- Signatures replaced by a later version of this file (CREATE OR REPLACE would add an overload).
DROP FUNCTION IF EXISTS booking.sweep_expired_holds(int, interval);
DROP FUNCTION IF EXISTS booking.sweep_expired_holds(int, interval, float8);

CREATE OR REPLACE FUNCTION booking.sweep_batch(p_batch_size int)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- One batch, in the caller's transaction: bookings awaiting payment past their deadline
-- become expired (booking rows first, then holds: the lock order everywhere); then the
-- p_batch_size open holds with the oldest
-- deadlines already passed are marked expired (rows kept for audit) and their units go
-- back to their buckets, locked once, in order, at the end.
DECLARE
    v_bookings int := booking.expire_due_bookings(p_batch_size);
    v_ids uuid[] := booking.dead_open_holds(NULL, p_batch_size);
BEGIN
    RETURN jsonb_build_object(
        'expired_bookings', v_bookings,
        'expired_holds', cardinality(v_ids),
        'units_returned', booking.return_to_buckets(booking.end_holds(v_ids, 'expired'))
    );
END;
$$;

CREATE OR REPLACE PROCEDURE booking.sweep_expired_holds(
    INOUT p_result jsonb DEFAULT NULL,
    p_batch_size int DEFAULT 2000,
    p_time_budget interval DEFAULT '30 seconds',
    p_pause_ratio float8 DEFAULT 2.0
)
LANGUAGE plpgsql
AS $$
-- Sweeps batch after batch, each in its own short transaction, until no dead open hold is
-- left or the time budget is spent; after each batch it pauses p_pause_ratio times as long
-- as the batch took (like vacuum's cost delay), so a backlog does not take the CPU from
-- buyers. Short transactions matter: one long one would hold back pruning of the hot
-- bucket rows' dead versions and slow every buyer. Nothing depends on this running: a
-- dead hold is already not counted. A failing batch is rolled back and ends the sweep;
-- its error is in the result ('error'), for the cron job to record (a CALL that commits
-- cannot be wrapped in an exception block by its caller). (A procedure that commits may
-- have no SET clause and cannot be SECURITY DEFINER: every name here is schema-qualified.)
DECLARE
    v_started timestamptz := pg_catalog.clock_timestamp();
    v_batch_started timestamptz;
    v_batch jsonb;
    v_holds int := 0;
    v_bookings int := 0;
    v_units int := 0;
    v_batches int := 0;
    v_error text;
BEGIN
    LOOP
        v_batch_started := pg_catalog.clock_timestamp();
        BEGIN
            v_batch := booking.sweep_batch(p_batch_size);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_error = MESSAGE_TEXT;
            EXIT;
        END;
        COMMIT;
        EXIT WHEN (v_batch ->> 'expired_holds')::int = 0 AND (v_batch ->> 'expired_bookings')::int = 0;
        v_holds := v_holds + (v_batch ->> 'expired_holds')::int;
        v_bookings := v_bookings + (v_batch ->> 'expired_bookings')::int;
        v_units := v_units + (v_batch ->> 'units_returned')::int;
        v_batches := v_batches + 1;
        EXIT WHEN greatest((v_batch ->> 'expired_holds')::int, (v_batch ->> 'expired_bookings')::int) < p_batch_size
            OR pg_catalog.clock_timestamp() - v_started > p_time_budget;
        PERFORM pg_catalog.pg_sleep(
            extract(EPOCH FROM pg_catalog.clock_timestamp() - v_batch_started) * p_pause_ratio
        );
    END LOOP;
    p_result := pg_catalog.jsonb_build_object(
        'expired_holds', v_holds, 'expired_bookings', v_bookings, 'units_returned', v_units, 'batches', v_batches,
        'ms', round(extract(EPOCH FROM pg_catalog.clock_timestamp() - v_started) * 1000)
    ) || CASE WHEN v_error IS NULL THEN '{}'::jsonb ELSE pg_catalog.jsonb_build_object('error', v_error) END;
END;
$$;

CREATE OR REPLACE PROCEDURE booking.sweep_holds_cron()
LANGUAGE plpgsql
AS $$
-- The booking-sweep-holds cron job: the sweep between two heartbeats (see core.cron_run_begin).
DECLARE
    v_result jsonb;
BEGIN
    PERFORM core.cron_run_begin('booking-sweep-holds');
    COMMIT;
    CALL booking.sweep_expired_holds(v_result);
    PERFORM core.cron_run_end('booking-sweep-holds', v_result, v_result ->> 'error');
END;
$$;

CREATE OR REPLACE FUNCTION booking.purge_ended_holds(
    p_retention interval DEFAULT '30 days', p_batch_size int DEFAULT 10000
)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- Deletes released and expired holds that ended more than p_retention ago, one batch.
DECLARE
    v_deleted int;
BEGIN
    DELETE FROM booking.holds
    WHERE hold_id IN (
        SELECT h.hold_id FROM booking.holds AS h
        WHERE h.ended_at < now() - p_retention AND h.status IN ('released', 'expired')
        ORDER BY h.ended_at
        LIMIT p_batch_size
    );
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN jsonb_build_object('deleted', v_deleted);
END;
$$;
