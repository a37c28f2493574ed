-- movements_by_sku (sku, movement_id) was paid for by every stock movement (one to three
-- an order) and read by no query: over a 45-minute run of the reference day
-- (235,434 orders) pg_stat_user_indexes counted no scan of it, at 64 MB. The per-SKU
-- ledger is read only whole (stockcore.invariant_violations(), the load tools' checks),
-- by sequential scan. A per-SKU history, when one is served, brings its own index.
DROP INDEX IF EXISTS stockcore.movements_by_sku;
