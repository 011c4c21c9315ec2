-- Inventory (a sellable pool: an event's ticket type, a flight's fare bucket) and holds.
--
-- Capacity lives in booking.inventory_buckets, not on the inventory row: a hot on-sale
-- spreads buyers over up to 64 bucket rows (taken with FOR UPDATE SKIP LOCKED) instead of
-- queueing them all on one row. For every inventory, at every commit:
--   capacity = sum(bucket.free) + sum(bucket.sold) + sum(quantity of holds 'live' or 'booked')
-- and CHECK (free >= 0) makes overselling impossible. A hold past its deadline is dead at
-- once (every reader compares expires_at with the clock); its quantity returns to a bucket
-- when it is swept or reclaimed, which only changes where the unit is counted.

CREATE SCHEMA booking;
COMMENT ON SCHEMA booking IS 'Inventory, holds and bookings (private: reached through api.*)';

-- Currencies Stripe charges in, with their minor units (money is bigint minor units).
CREATE TABLE core.currencies (
    code text PRIMARY KEY,
    minor_units smallint NOT NULL,
    CONSTRAINT check_currencies_code CHECK (code ~ '^[a-z]{3}$'),
    CONSTRAINT check_currencies_minor_units CHECK (minor_units IN (0, 2, 3))
);
INSERT INTO core.currencies (code, minor_units)
SELECT c.code, CASE
    WHEN c.code IN ('bif', 'clp', 'djf', 'gnf', 'jpy', 'kmf', 'krw', 'mga', 'pyg', 'rwf', 'ugx', 'vnd', 'vuv',
                    'xaf', 'xof', 'xpf') THEN 0
    WHEN c.code IN ('bhd', 'jod', 'kwd', 'omr', 'tnd') THEN 3
    ELSE 2
END AS minor_units
FROM unnest(ARRAY[
    'aed', 'afn', 'all', 'amd', 'ang', 'aoa', 'ars', 'aud', 'awg', 'azn', 'bam', 'bbd', 'bdt', 'bgn', 'bhd',
    'bif', 'bmd', 'bnd', 'bob', 'brl', 'bsd', 'bwp', 'byn', 'bzd', 'cad', 'cdf', 'chf', 'clp', 'cny', 'cop',
    'crc', 'cve', 'czk', 'djf', 'dkk', 'dop', 'dzd', 'egp', 'etb', 'eur', 'fjd', 'fkp', 'gbp', 'gel', 'gip',
    'gmd', 'gnf', 'gtq', 'gyd', 'hkd', 'hnl', 'htg', 'huf', 'idr', 'ils', 'inr', 'isk', 'jmd', 'jod', 'jpy',
    'kes', 'kgs', 'khr', 'kmf', 'krw', 'kwd', 'kyd', 'kzt', 'lak', 'lbp', 'lkr', 'lrd', 'lsl', 'mad', 'mdl',
    'mga', 'mkd', 'mmk', 'mnt', 'mop', 'mur', 'mvr', 'mwk', 'mxn', 'myr', 'mzn', 'nad', 'ngn', 'nio', 'nok',
    'npr', 'nzd', 'omr', 'pab', 'pen', 'pgk', 'php', 'pkr', 'pln', 'pyg', 'qar', 'ron', 'rsd', 'rub', 'rwf',
    'sar', 'sbd', 'scr', 'sek', 'sgd', 'shp', 'sle', 'sos', 'srd', 'szl', 'thb', 'tjs', 'tnd', 'top', 'try',
    'ttd', 'twd', 'tzs', 'uah', 'ugx', 'usd', 'uyu', 'uzs', 'vnd', 'vuv', 'wst', 'xaf', 'xcd', 'xof', 'xpf',
    'yer', 'zar', 'zmw'
]) AS c (code);

CREATE TABLE booking.inventory (
    inventory_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sku text NOT NULL,
    capacity int NOT NULL,
    unit_amount bigint NOT NULL,
    currency text NOT NULL REFERENCES core.currencies (code),
    hold_ttl interval NOT NULL,
    extension interval NOT NULL,
    max_extensions int NOT NULL,
    bucket_count smallint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inventory_sku_key UNIQUE (sku),
    CONSTRAINT check_inventory_sku CHECK (length(sku) BETWEEN 1 AND 200),
    CONSTRAINT check_inventory_capacity CHECK (capacity BETWEEN 0 AND 10000000),
    CONSTRAINT check_inventory_unit_amount CHECK (unit_amount BETWEEN 0 AND 100000000000),
    CONSTRAINT check_inventory_hold_ttl CHECK (hold_ttl > interval '0' AND hold_ttl <= interval '1 day'),
    CONSTRAINT check_inventory_extension CHECK (extension >= interval '0' AND extension <= interval '1 day'),
    CONSTRAINT check_inventory_max_extensions CHECK (max_extensions BETWEEN 0 AND 10),
    CONSTRAINT check_inventory_bucket_count CHECK (bucket_count BETWEEN 1 AND 64)
);

CREATE TABLE booking.inventory_buckets (
    inventory_id uuid NOT NULL REFERENCES booking.inventory (inventory_id),
    bucket_no smallint NOT NULL,
    free int NOT NULL,
    sold int NOT NULL DEFAULT 0,
    PRIMARY KEY (inventory_id, bucket_no),
    CONSTRAINT check_inventory_buckets_free CHECK (free >= 0),
    CONSTRAINT check_inventory_buckets_sold CHECK (sold >= 0)
) WITH (fillfactor = 50);  -- room for HOT updates of these hot rows

-- Units going back to a bucket when holds end (gathered, then applied in bucket order).
CREATE TYPE booking.bucket_return AS (inventory_id uuid, bucket_no smallint, units int);

-- No foreign keys here on purpose: each would take a KEY SHARE lock on the one inventory
-- row per insert (a multixact on the hottest row of an on-sale). Holds are written only
-- by booking functions that have just locked one of the inventory's buckets.
CREATE TABLE booking.holds (
    hold_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    inventory_id uuid NOT NULL,
    -- Where the quantity returns when the hold ends (it may have been taken from several).
    bucket_no smallint NOT NULL,
    quantity int NOT NULL,
    holder text NOT NULL,
    hold_key text,
    status text NOT NULL DEFAULT 'live',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz NOT NULL,
    extensions_used int NOT NULL DEFAULT 0,
    ended_at timestamptz,
    CONSTRAINT check_holds_quantity CHECK (quantity BETWEEN 1 AND 100),
    CONSTRAINT check_holds_holder CHECK (length(holder) BETWEEN 1 AND 200),
    CONSTRAINT check_holds_hold_key CHECK (length(hold_key) BETWEEN 1 AND 255),
    CONSTRAINT check_holds_status CHECK (status IN ('live', 'booked', 'converted', 'released', 'expired')),
    CONSTRAINT check_holds_extensions_used CHECK (extensions_used BETWEEN 0 AND 10),
    CONSTRAINT check_holds_ended CHECK ((status IN ('live', 'booked')) = (ended_at IS NULL))
);

-- The sweeper reads open holds by deadline; place_hold and availability by inventory.
CREATE INDEX holds_open_deadline_idx ON booking.holds (expires_at) WHERE status IN ('live', 'booked');
CREATE INDEX holds_open_inventory_deadline_idx ON booking.holds (inventory_id, expires_at)
WHERE status IN ('live', 'booked');
-- One open hold per (holder, hold_key).
CREATE UNIQUE INDEX holds_open_holder_key_idx ON booking.holds (holder, hold_key)
WHERE hold_key IS NOT NULL AND status IN ('live', 'booked');
-- Retention purge of ended holds.
CREATE INDEX holds_ended_at_idx ON booking.holds (ended_at) WHERE ended_at IS NOT NULL;
