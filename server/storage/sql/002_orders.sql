-- Orders: one row per order, its append-only status history, payments, and the
-- transactional outbox of order events. Every status change writes the order row, a
-- history row and an event in one transaction (server/orders/service.py).

-- status and path hold server.domain.orders.OrderStatus values; path is every status
-- the order has been in, oldest first, so version (the number of changes) is its length.
-- Lines are parallel arrays, merged per SKU and sorted, as in reservations.
CREATE TABLE stockcore.orders (
    order_id          text        PRIMARY KEY,
    customer_id       text        NOT NULL,
    status            smallint    NOT NULL CHECK (status BETWEEN 1 AND 7),
    path              smallint[]  NOT NULL,
    version           bigint      NOT NULL,
    currency          text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    skus              text[]      NOT NULL,
    quantities        bigint[]    NOT NULL,
    unit_prices       bigint[]    NOT NULL,
    total_minor       bigint      NOT NULL CHECK (total_minor >= 0),
    fingerprint       bytea       NOT NULL,
    created_at        timestamptz NOT NULL,
    payment_deadline  timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    payment_id        text,
    paid_minor        bigint      NOT NULL DEFAULT 0,
    carrier           text,
    tracking_no       text,
    carrier_ack_id    text,
    shipped_at        timestamptz,
    in_transit_at     timestamptz,
    delivered_at      timestamptz,
    last_sync_at      timestamptz,
    refund_owed_minor bigint      NOT NULL DEFAULT 0 CHECK (refund_owed_minor >= 0),
    cancel_reason     text,
    CHECK (version = cardinality(path) AND status = path[cardinality(path)]),
    CHECK (cardinality(skus) = cardinality(quantities) AND cardinality(skus) = cardinality(unit_prices)),
    -- Shipped states need a parcel; paid ones a payment.
    CHECK (status NOT IN (3, 4, 5) OR (carrier IS NOT NULL AND tracking_no IS NOT NULL
                                       AND carrier_ack_id IS NOT NULL AND shipped_at IS NOT NULL)),
    CHECK (status NOT IN (2, 3, 4, 5) OR payment_id IS NOT NULL)
);
-- ListOrders: one customer's orders, newest first, keyset-paged by (created_at, order_id).
CREATE INDEX orders_by_customer ON stockcore.orders (customer_id, created_at DESC, order_id DESC);

CREATE TABLE stockcore.order_history (
    order_id    text        NOT NULL,
    version     bigint      NOT NULL,
    from_status smallint,
    to_status   smallint    NOT NULL,
    changed_at  timestamptz NOT NULL,
    caller      text        NOT NULL,
    reason      text        NOT NULL,
    request_id  text        NOT NULL,
    PRIMARY KEY (order_id, version)
);
CREATE TRIGGER order_history_append_only BEFORE UPDATE OR DELETE ON stockcore.order_history
    FOR EACH ROW EXECUTE FUNCTION stockcore.refuse_change();

-- The payment that paid each paid order; payment_id makes ConfirmPayment idempotent.
CREATE TABLE stockcore.payments (
    payment_id   text        PRIMARY KEY,
    order_id     text        NOT NULL,
    amount_minor bigint      NOT NULL,
    currency     text        NOT NULL,
    caller       text        NOT NULL,
    request_id   text        NOT NULL,
    created_at   timestamptz NOT NULL
);

-- The outbox. A change inserts its event with cursor NULL; the one sequencer
-- (server/orders/relay.py, under an advisory lock) gives events gap-free increasing
-- cursors in id order, then publishes them to Redis and sets published_at.
-- payload is the serialized stockcore.v1.OrderEvent without its cursor.
CREATE TABLE stockcore.order_events (
    event_id      text        PRIMARY KEY,
    id            bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    cursor        bigint      UNIQUE,
    order_id      text        NOT NULL,
    order_version bigint      NOT NULL,
    type          smallint    NOT NULL,
    customer_id   text        NOT NULL,
    payload       bytea       NOT NULL,
    created_at    timestamptz NOT NULL,
    published_at  timestamptz,
    CHECK (published_at IS NULL OR cursor IS NOT NULL)
);
-- The relay's work list: events not yet published (sequenced or not). It stays small.
CREATE INDEX order_events_unpublished ON stockcore.order_events (id) WHERE published_at IS NULL;
-- WatchOrders filtered by customer or by order, in cursor order.
CREATE INDEX order_events_by_customer ON stockcore.order_events (customer_id, cursor)
    WHERE cursor IS NOT NULL;
CREATE INDEX order_events_by_order ON stockcore.order_events (order_id, cursor)
    WHERE cursor IS NOT NULL;

-- An event never changes once written; only its cursor (once) and published_at are set.
CREATE FUNCTION stockcore.keep_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'order events are never deleted' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.payload IS DISTINCT FROM OLD.payload OR NEW.event_id IS DISTINCT FROM OLD.event_id
       OR NEW.order_id IS DISTINCT FROM OLD.order_id OR NEW.type IS DISTINCT FROM OLD.type
       OR (OLD.cursor IS NOT NULL AND NEW.cursor IS DISTINCT FROM OLD.cursor) THEN
        RAISE EXCEPTION 'an order event is immutable but for its cursor and publication'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER order_events_immutable BEFORE UPDATE OR DELETE ON stockcore.order_events
    FOR EACH ROW EXECUTE FUNCTION stockcore.keep_event();
