-- Cache versions (contract: "Catalog and cache versions"). Tables: migrations/V0013.
--
-- What bumps 'catalog' and 'inventory:<id>': a transaction that inserts or updates an
-- inventory row (create_inventory, set_unit_amount, set_capacity, any settings change),
-- and one that changes whether the inventory is sold out (no bucket has a free unit).
--
-- How, without a row every buyer queues on:
-- 1. A bucket's free count can only make the inventory sold out (or available again) when
--    it goes to 0 (or up from 0). Only those updates fire the trigger below (its WHEN is
--    evaluated in C, no function call): an ordinary hold pays for one WHEN, nothing else.
--    One trigger, not two: with a deferred constraint trigger beside it on the buckets,
--    every hold paid for a second WHEN and trigger, about 6% of place_hold at 32 clients
--    with neither ever firing (tests/bench/cache_bench.py, 8 runs each way).
-- 2. Such a transaction notes the inventory in a transaction-local setting
--    (booking.cache_pending); its first note also inserts a row in booking.cache_notes,
--    whose deferred constraint trigger runs at commit, once the transaction's work is done:
--    for all the inventories it noted, in inventory order, it locks their booking.announced_stock rows,
--    then, in a new statement (a new READ COMMITTED snapshot, taken after the locks), reads
--    whether each is sold out now and compares with the row. Two transactions emptying the
--    last two buckets at once: the second waits for the first's row lock, so its read sees
--    the first's commit and it announces the sell-out; without the lock each would see the
--    other's bucket still free and neither would (tests/sql/test_cache_versions.py).
--    Every locked row is rewritten (same value or not), so under REPEATABLE READ the
--    second one fails with 40001 instead of reading through an old snapshot.
-- 3. Then, if anything changed, 'catalog' once, then 'inventory:<id>' in id order.
--    Lock order at commit is the same for everyone (announced rows by id, 'catalog',
--    'inventory:*' by id), and it comes after every bucket lock the transaction takes, so
--    it adds no deadlock: a transaction holding 'catalog' waits for nothing but commit.
--    The 'catalog' row is held from the bump to the commit: only transactions that flip
--    a sold-out state or change an inventory take it.
-- A hold that dies at its deadline frees its units with no transaction: a cached
-- sold_out may stay true until the sweep (or the next transaction that reclaims it) moves
-- the units back to a bucket, which bumps. Paths that consume a dead hold's units without
-- touching a bucket (a hold key reused after its hold died, a late payment converting an
-- expired booked hold) note the inventory as forced (booking.note_cache_change, p_force).

CREATE OR REPLACE FUNCTION booking.note_cache_change(p_inventory_id uuid, p_force boolean)
RETURNS void
LANGUAGE plpgsql
AS $$
-- Notes the inventory for booking.announce_changes at commit. p_force: bump whatever the
-- sold-out state (its settings changed, or its availability changed with no bucket
-- crossing 0). The first note of a transaction queues the commit-time announcement with a
-- row of booking.cache_notes (no lock: taking the announced row or 'catalog' here, before
-- the transaction's bucket locks, could deadlock). The setting and the row are local to
-- the transaction, and go together with a subtransaction that rolls back.
DECLARE
    v_pending text := coalesce(current_setting('booking.cache_pending', true), '');
    v_entry text := p_inventory_id::text || CASE WHEN p_force THEN '+' ELSE '' END;
BEGIN
    IF strpos(v_pending, v_entry) = 0 THEN
        PERFORM set_config('booking.cache_pending', v_pending || ',' || v_entry, true);
        IF v_pending = '' THEN
            INSERT INTO booking.cache_notes (inventory_id) VALUES (p_inventory_id);
        END IF;
    END IF;
END;
$$;

-- booking.note_forced_change(id) was note_cache_change(id, p_force => true) and nothing else
-- once the first note queues the announcement itself: its callers call that.
DROP FUNCTION IF EXISTS booking.note_forced_change(uuid);

CREATE OR REPLACE FUNCTION booking.note_row_change()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- AFTER a row of an inventory changed: notes NEW.inventory_id (booking.note_cache_change),
-- forced when the trigger's argument says so ('forced': a setting changed; 'crossing': a
-- bucket's free count went to 0 or up from 0, which bumps only if the sold-out state moved).
BEGIN
    PERFORM booking.note_cache_change(NEW.inventory_id, p_force => TG_ARGV[0] = 'forced');
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION booking.announce_changes()
RETURNS trigger
LANGUAGE plpgsql
-- It runs at commit, after the api function that queued it has returned: as its owner,
-- since the caller's login may not touch these tables.
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- At commit, once for all the inventories noted by the transaction (its one booking.cache_notes
-- row's deferred event; an event that finds nothing pending does nothing). See the top of the file.
DECLARE
    v_pending text := current_setting('booking.cache_pending', true);
    v_ids uuid[];
    v_forced uuid[];
    v_bump uuid[];
    v_id uuid;
BEGIN
    IF v_pending IS NULL OR v_pending = '' THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('booking.cache_pending', '', true);
    DELETE FROM booking.cache_notes AS n WHERE n.txid = txid_current();
    SELECT array_agg(DISTINCT rtrim(e, '+')::uuid ORDER BY rtrim(e, '+')::uuid),
           array_agg(DISTINCT rtrim(e, '+')::uuid) FILTER (WHERE e LIKE '%+')
    INTO v_ids, v_forced
    FROM unnest(string_to_array(v_pending, ',')) AS e
    WHERE e <> '';
    IF v_ids IS NULL THEN
        RETURN NULL;
    END IF;
    -- A row for a new inventory (the state is set below).
    INSERT INTO booking.announced_stock (inventory_id, sold_out)
    SELECT i.inventory_id, false FROM booking.inventory AS i WHERE i.inventory_id = ANY(v_ids)
    ON CONFLICT (inventory_id) DO NOTHING;
    -- The lock, in id order; the read that decides comes in the next statement.
    PERFORM FROM booking.announced_stock AS s
    WHERE s.inventory_id = ANY(v_ids)
    ORDER BY s.inventory_id
    FOR UPDATE;
    WITH current_state AS (
        SELECT s.inventory_id, s.sold_out AS was_sold_out,
               coalesce((SELECT sum(b.free) = 0 FROM booking.inventory_buckets AS b
                         WHERE b.inventory_id = s.inventory_id), true) AS sold_out
        FROM booking.announced_stock AS s
        WHERE s.inventory_id = ANY(v_ids)
    ),
    written AS (
        UPDATE booking.announced_stock AS s
        SET sold_out = c.sold_out
        FROM current_state AS c
        WHERE s.inventory_id = c.inventory_id
        RETURNING s.inventory_id, c.was_sold_out <> c.sold_out AS flipped
    )
    SELECT array_agg(x.inventory_id ORDER BY x.inventory_id) INTO v_bump
    FROM (
        SELECT w.inventory_id FROM written AS w WHERE w.flipped
        UNION
        SELECT f FROM unnest(v_forced) AS f
    ) AS x;
    IF v_bump IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM core.bump_cache_version('catalog');
    FOREACH v_id IN ARRAY v_bump LOOP
        PERFORM core.bump_cache_version('inventory:' || v_id::text);
    END LOOP;
    RETURN NULL;
END;
$$;

-- Buckets: only an update that takes free to 0 or up from 0 (the WHEN is all an ordinary
-- hold pays).
DROP TRIGGER IF EXISTS buckets_note_crossing ON booking.inventory_buckets;
CREATE TRIGGER buckets_note_crossing
AFTER UPDATE OF free ON booking.inventory_buckets
FOR EACH ROW WHEN ((old.free = 0) <> (new.free = 0))
EXECUTE FUNCTION booking.note_row_change('crossing');
-- (Each had a deferred twin running booking.announce_changes; the cache_notes row of the
-- first note queues that now: see the top of the file.)
DROP TRIGGER IF EXISTS buckets_announce_at_commit ON booking.inventory_buckets;

-- Inventory rows: created, or any setting changed (price, capacity, hold times).
DROP TRIGGER IF EXISTS inventory_note_change ON booking.inventory;
CREATE TRIGGER inventory_note_change
AFTER INSERT OR UPDATE ON booking.inventory
FOR EACH ROW EXECUTE FUNCTION booking.note_row_change('forced');
DROP TRIGGER IF EXISTS inventory_announce_at_commit ON booking.inventory;

-- The commit-time announcement, queued by the first note of a transaction.
DROP TRIGGER IF EXISTS cache_notes_announce_at_commit ON booking.cache_notes;
CREATE CONSTRAINT TRIGGER cache_notes_announce_at_commit
AFTER INSERT ON booking.cache_notes
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION booking.announce_changes();

-- One trigger function for both notes (above) since this version: the two it replaces.
DROP FUNCTION IF EXISTS booking.note_bucket_crossing();
DROP FUNCTION IF EXISTS booking.note_inventory_change();

-- ---------------------------------------------------------------------------------------
-- api

CREATE OR REPLACE FUNCTION api.cache_versions(p_namespaces text[])
RETURNS TABLE (namespace text, version bigint)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- One statement: every version from one snapshot, in the order asked.
DECLARE
    v_bad text;
BEGIN
    PERFORM core.require(p_namespaces, 'p_namespaces');
    IF cardinality(p_namespaces) NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'p_namespaces must name 1 to 1000 namespaces, got %', cardinality(p_namespaces)
            USING ERRCODE = '22023';
    END IF;
    IF array_position(p_namespaces, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'p_namespaces must not contain NULL' USING ERRCODE = '22004';
    END IF;
    SELECT n INTO v_bad FROM unnest(p_namespaces) AS n WHERE length(n) NOT BETWEEN 1 AND 200 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'a namespace is 1 to 200 characters, got %', length(v_bad) USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    SELECT n.name, coalesce(v.version, 0)
    FROM unnest(p_namespaces) WITH ORDINALITY AS n (name, ord)
    LEFT JOIN core.cache_versions AS v ON v.namespace = n.name
    ORDER BY n.ord;
END;
$$;
COMMENT ON FUNCTION api.cache_versions(text[]) IS
'The current version of each namespace (0 if never bumped), all from one snapshot, in the order given. 22004/22023 on a NULL, empty or longer than 200 characters namespace, or more than 1000.';

CREATE OR REPLACE FUNCTION api.bump_cache_version(p_namespace text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- In the caller's transaction: the new version is seen by others when it commits. The row
-- stays locked until then; bump last in a transaction that also changes inventories (the
-- database takes 'catalog' at commit, after its other locks).
BEGIN
    PERFORM core.require_text(p_namespace, 'p_namespace', 200);
    RETURN core.bump_cache_version(p_namespace);
END;
$$;
COMMENT ON FUNCTION api.bump_cache_version(text) IS
'Bumps a namespace the application owns (1..200 characters) in the caller''s transaction; returns the new version. A bump only ever invalidates.';

CREATE OR REPLACE FUNCTION api.catalog(p_sku_prefix text DEFAULT '', p_limit int DEFAULT 100)
RETURNS TABLE (
    inventory_id uuid, sku text, unit_amount bigint, currency text,
    capacity int, available int, sold_out boolean, version bigint
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- One statement, one snapshot: the rows and the 'catalog' version they belong to. A
-- cache entry keyed by that version is exact for everything a bump announces (price,
-- capacity, settings, sold_out as a transaction left it); `available` is as of the read.
-- available and sold_out as in api.availability: dead, unswept holds count as available.
BEGIN
    PERFORM core.require(p_sku_prefix, 'p_sku_prefix');
    IF length(p_sku_prefix) > 200 THEN
        RAISE EXCEPTION 'p_sku_prefix is % characters long, at most 200 are allowed', length(p_sku_prefix)
            USING ERRCODE = '22001';
    END IF;
    PERFORM core.require_range(p_limit, 'p_limit', 1, 1000);
    RETURN QUERY
    SELECT
        i.inventory_id, i.sku, i.unit_amount, i.currency, i.capacity,
        booking.available_units(s.free, s.dead_units, s.owed, s.waits),
        booking.available_units(s.free, s.dead_units, s.owed, s.waits) = 0,
        v.version
    FROM (SELECT coalesce((SELECT c.version FROM core.cache_versions AS c WHERE c.namespace = 'catalog'), 0)
          AS version) AS v
    CROSS JOIN LATERAL (
        SELECT x.* FROM booking.inventory AS x
        WHERE x.sku >= p_sku_prefix AND starts_with(x.sku, p_sku_prefix)
        ORDER BY x.sku
        LIMIT p_limit
    ) AS i
    CROSS JOIN LATERAL booking.stock(i.inventory_id) AS s
    ORDER BY i.sku;
END;
$$;
COMMENT ON FUNCTION api.catalog(text, int) IS
'Inventories whose sku starts with p_sku_prefix, by sku, at most p_limit (1..1000): price, capacity, available and sold_out as in api.availability, and version, that of namespace ''catalog'', read in the same snapshot as the rows.';

CREATE OR REPLACE FUNCTION api.set_unit_amount(p_inventory_id uuid, p_unit_amount bigint)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
-- The price of holds placed from now on (each hold keeps the price it was placed at, and a
-- booking is priced from its holds). The inventory row's trigger bumps the versions.
BEGIN
    PERFORM core.require(p_inventory_id, 'p_inventory_id');
    PERFORM core.require_range(p_unit_amount, 'p_unit_amount', 0, 100000000000);
    UPDATE booking.inventory AS i SET unit_amount = p_unit_amount WHERE i.inventory_id = p_inventory_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'inventory % not found', p_inventory_id USING ERRCODE = 'RB005';
    END IF;
END;
$$;
COMMENT ON FUNCTION api.set_unit_amount(uuid, bigint) IS
'Sets the price (minor units, 0..1e11) of holds placed from now on; holds and bookings already made keep theirs. Bumps ''catalog'' and ''inventory:<id>'' at commit. RB005 unknown inventory.';
