-- CreateOrder's batch as one typed argument: one stockcore.order_request per order, its
-- lines inside it, instead of fifteen positional arrays that Python and SQL had to lay
-- out and read back in the same order (first/count offsets into flat line arrays).
-- stockcore.create_orders (sql/live/orders.sql) takes an array of them.

-- One line of an order: the stock shard the SKU hashes to (server.domain.sharding), the
-- SKU, the quantity held, and the unit price in minor units of the order's currency.
CREATE TYPE stockcore.order_line_request AS (
    shard       smallint,
    sku         text,
    quantity    bigint,
    unit_price  bigint
);

-- One CreateOrder: hold_fingerprint is what makes two holds with one id the same hold
-- (the order's hold has the order's id), fingerprint what makes two orders the same
-- order; total is the sum of the lines, computed by the server.
CREATE TYPE stockcore.order_request AS (
    order_id         text,
    hold_fingerprint bytea,
    ttl_ms           bigint,
    caller           text,
    request_id       text,
    customer_id      text,
    currency         text,
    total            bigint,
    fingerprint      bytea,
    lines            stockcore.order_line_request[]
);
