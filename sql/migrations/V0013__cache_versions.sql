-- Cache versions (CONTRACT.md, "Catalog and cache versions"): a counter per namespace,
-- bumped by the transaction that makes the change it announces, so a reader who reads a
-- version and the data in one snapshot can never pair one with the other's neighbour.
-- The functions and triggers that bump them are in sql/functions/versions.sql.

-- One row per namespace ever bumped ('catalog', 'inventory:<uuid>', the application's own);
-- a namespace with no row is at version 0.
CREATE TABLE core.cache_versions (
    namespace core.text_1_200 PRIMARY KEY,
    version bigint NOT NULL
);
COMMENT ON TABLE core.cache_versions IS
'The current version of each cache namespace; bumped in the transaction of the change (sql/functions/versions.sql).';

-- The sold-out state last announced by a bump, per inventory: sold out when no bucket has a
-- free unit. A transaction that may have changed it (a bucket went to or from 0) compares
-- the state at commit with this row, which it locks first: that lock is what makes two
-- transactions emptying the last two buckets at once take turns, so the second one sees
-- the first's commit and announces the sell-out (see booking.announce_changes).
CREATE TABLE booking.announced_stock (
    inventory_id uuid PRIMARY KEY REFERENCES booking.inventory (inventory_id),
    sold_out boolean NOT NULL
);
INSERT INTO booking.announced_stock (inventory_id, sold_out)
SELECT i.inventory_id, coalesce((SELECT sum(b.free) = 0 FROM booking.inventory_buckets AS b
                                 WHERE b.inventory_id = i.inventory_id), true) AS sold_out
FROM booking.inventory AS i;

-- Inventories noted for announcement by a transaction whose change touched no bucket
-- across 0 and no inventory row (a dead hold's units taken by a reused hold key or sold
-- by a late payment): the insert queues the deferred trigger that announces at commit,
-- which deletes the transaction's rows. Empty outside open transactions; no key, so
-- concurrent inserts never wait for each other.
CREATE TABLE booking.cache_notes (
    txid bigint NOT NULL DEFAULT txid_current(),
    inventory_id uuid NOT NULL
);

-- The price a hold was placed at: set_unit_amount changes the price of holds placed from
-- then on, and a booking is priced from its holds. NULL (holds placed before this
-- migration, when prices could not change) means the inventory's price. Nullable with no
-- default: adding it rewrites nothing.
ALTER TABLE booking.holds ADD COLUMN unit_amount core.minor_units;
