-- An adjustment is made either by a caller (AdjustStock: its idempotency_key, which the
-- caller chooses) or by the server (a paid order cancelled before shipping puts each
-- line's units back on hand). Both used to be keyed by idempotency_key, the server's as
-- 'order-cancel:<order id>:<sku>', in the callers' namespace: a caller who took that key
-- first made the order's cancel fail on every retry, and ids holding ':' made two lines
-- share a key ('a:b' + 'c', 'a' + 'b:c'). Now a server-made row has no key at all and is
-- the one row of its order's line: order_id and sku, unique together, which no caller
-- can write.
ALTER TABLE stockcore.adjustments ADD COLUMN order_id text;
ALTER TABLE stockcore.adjustments DROP CONSTRAINT adjustments_pkey;
ALTER TABLE stockcore.adjustments ALTER COLUMN idempotency_key DROP NOT NULL;

-- The rows cancels wrote: each came with a movement under the same key that names the
-- order (a caller's adjustment's movement names none), written in the same statement.
UPDATE stockcore.adjustments a
   SET order_id = m.order_id, idempotency_key = NULL
  FROM stockcore.movements m
 WHERE m.adjustment_key = a.idempotency_key AND m.sku = a.sku
   AND m.kind = 'adjust' AND m.order_id IS NOT NULL;

ALTER TABLE stockcore.adjustments
    ADD CONSTRAINT adjustments_idempotency_key_key UNIQUE (idempotency_key),
    ADD CONSTRAINT adjustments_order_line_key UNIQUE (order_id, sku),
    ADD CONSTRAINT adjustments_made_by_caller_or_order
        CHECK ((idempotency_key IS NULL) <> (order_id IS NULL));
