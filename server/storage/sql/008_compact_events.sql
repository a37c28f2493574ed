-- Smaller outbox bodies. An event's jsonb carried every column of the order, nulls
-- included, and the order id and version twice: about 1.2 kB a row, written at insert and
-- copied again when the relay gives the row its cursor. Nulls and repeats are left out
-- now (readers fill them in: server/storage/orders_pg.py); rows written before keep
-- their full bodies, which read the same.
CREATE OR REPLACE FUNCTION stockcore.event_body(o stockcore.orders, h stockcore.order_history)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'order', jsonb_strip_nulls(to_jsonb(o) - 'fingerprint'),
        'change', jsonb_strip_nulls(to_jsonb(h) - 'order_id' - 'version'))
$$;
