-- CancelOrder with a customer's token (a shopper's, minted by a checkout gateway): only
-- that customer's order, and only while it is unpaid. Both are decided under the order's
-- lock, in the statement that cancels, so a payment committing meanwhile is never undone
-- by a shopper. p_customers[i] is the customer request i is bound to, or NULL for a
-- service's request (decided by cancel_orders alone). Codes beyond cancel_orders': 7 not
-- this customer's order, or no such order (a shopper learns nothing of other customers'
-- orders); 8 the customer's order, but paid or further along (ord shows it).
CREATE FUNCTION stockcore.cancel_orders_as(
    p_ids text[], p_reasons text[], p_callers text[], p_request_ids text[],
    p_customers text[], p_expiry_caller text,
    OUT results stockcore.order_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql AS $$
DECLARE
    n      int := coalesce(array_length(p_ids, 1), 0);
    keep   int[] := '{}';
    o      stockcore.orders;
    inner_results stockcore.order_result[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_customers) c WHERE c IS NOT NULL) THEN
        SELECT x.results, x.levels INTO results, levels
          FROM stockcore.cancel_orders(p_ids, p_reasons, p_callers, p_request_ids,
                                       p_expiry_caller) x;
        RETURN;
    END IF;
    -- The orders' locks first, in lock order, as cancel_orders takes them after.
    PERFORM 1 FROM stockcore.orders x WHERE x.order_id = ANY (p_ids)
      ORDER BY x.order_id FOR UPDATE;
    results := array_fill(NULL::stockcore.order_result, ARRAY[n]);
    levels := '{}';
    FOR i IN 1 .. n LOOP
        IF p_customers[i] IS NULL THEN
            keep := keep || i;
            CONTINUE;
        END IF;
        SELECT * INTO o FROM stockcore.orders x WHERE x.order_id = p_ids[i];
        IF NOT FOUND OR o.customer_id <> p_customers[i] THEN
            results[i] := ROW(7, NULL, NULL, NULL, NULL, NULL)::stockcore.order_result;
        ELSIF o.status NOT IN (1, 6) THEN
            results[i] := ROW(8, o, NULL, NULL, NULL, NULL)::stockcore.order_result;
        ELSE
            keep := keep || i;
        END IF;
    END LOOP;
    IF cardinality(keep) = 0 THEN
        RETURN;
    END IF;
    SELECT x.results, x.levels INTO inner_results, levels
      FROM stockcore.cancel_orders(
             ARRAY(SELECT p_ids[k] FROM unnest(keep) WITH ORDINALITY u(k, j) ORDER BY j),
             ARRAY(SELECT p_reasons[k] FROM unnest(keep) WITH ORDINALITY u(k, j) ORDER BY j),
             ARRAY(SELECT p_callers[k] FROM unnest(keep) WITH ORDINALITY u(k, j) ORDER BY j),
             ARRAY(SELECT p_request_ids[k] FROM unnest(keep) WITH ORDINALITY u(k, j) ORDER BY j),
             p_expiry_caller) x;
    FOR j IN 1 .. cardinality(keep) LOOP
        results[keep[j]] := inner_results[j];
    END LOOP;
END $$;

-- As for the other batch functions (004, 007): index lookups only, no JIT.
ALTER FUNCTION stockcore.cancel_orders_as(text[], text[], text[], text[], text[], text)
    SET enable_seqscan = off;
ALTER FUNCTION stockcore.cancel_orders_as(text[], text[], text[], text[], text[], text)
    SET enable_hashjoin = off;
ALTER FUNCTION stockcore.cancel_orders_as(text[], text[], text[], text[], text[], text)
    SET enable_mergejoin = off;
ALTER FUNCTION stockcore.cancel_orders_as(text[], text[], text[], text[], text[], text)
    SET jit = off;
