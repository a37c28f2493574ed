-- Line refunds (RefundLine): some units of one line of a paid order owed back, money only
-- (no stock moves). Each is a refund of reason 3 LINE_REFUNDED, sent and settled as every
-- refund is. Functions: live/refunds.sql (stockcore.refund_lines) and live/orders.sql.

-- How many units of each line were refunded, parallel to the order's skus; NULL until its
-- first line refund, so no order row is rewritten here. refund_owed_minor stays what a
-- cancel owes back: what was paid, less the lines refunded before it. Neither ever owes
-- back more than was paid.
ALTER TABLE stockcore.orders ADD COLUMN refunded_quantities bigint[];
ALTER TABLE stockcore.orders ADD CONSTRAINT orders_refunded_quantities_per_line
    CHECK (refunded_quantities IS NULL OR cardinality(refunded_quantities) = cardinality(skus));
ALTER TABLE stockcore.orders ADD CONSTRAINT orders_refund_owed_within_paid
    CHECK (refund_owed_minor <= paid_minor);

-- A line refund's row: source_id is the caller's line_refund_id (a namespace of its own,
-- unique by the refunds' UNIQUE (reason, source_id)); sku and quantity name what was
-- refunded, note why (the caller's words), caller and request_id who asked, as the status
-- history records who changed an order. Refunds of the other reasons have none of them.
ALTER TABLE stockcore.refunds DROP CONSTRAINT refunds_reason_check;
ALTER TABLE stockcore.refunds ADD CONSTRAINT refunds_reason_check CHECK (reason BETWEEN 1 AND 3);
ALTER TABLE stockcore.refunds
    ADD COLUMN sku        text,
    ADD COLUMN quantity   bigint,
    ADD COLUMN note       text,
    ADD COLUMN caller     text,
    ADD COLUMN request_id text;
ALTER TABLE stockcore.refunds ADD CONSTRAINT refunds_line_named CHECK (
    (reason = 3) = (sku IS NOT NULL AND quantity > 0 AND note IS NOT NULL AND caller IS NOT NULL
                    AND request_id IS NOT NULL));

-- A line refund owes its amount in the ledger, in its transaction, as a cancel's refund
-- does (2 REFUND_OWED, whose source is the order id): 9 LINE_REFUND_OWED, refunds <-
-- refunds_payable, its source the line_refund_id. A kind of its own, so that the caller's
-- id can never meet an order id in UNIQUE (kind, source_id).
INSERT INTO stockcore.ledger_kinds (kind, name) VALUES (9, 'LINE_REFUND_OWED');
ALTER TABLE stockcore.ledger_transfers DROP CONSTRAINT ledger_transfers_kind_check;
ALTER TABLE stockcore.ledger_transfers ADD CONSTRAINT ledger_transfers_kind_check
    CHECK (kind BETWEEN 1 AND 9);

-- RefundLine's batch as one typed argument, and its one typed answer per request
-- (stockcore.refund_lines says what the codes mean).
CREATE TYPE stockcore.line_refund_request AS (
    line_refund_id text,
    order_id       text,
    sku            text,
    quantity       bigint,
    note           text,
    caller         text,
    request_id     text
);
CREATE TYPE stockcore.line_refund_result AS (
    code     smallint,
    ord      stockcore.orders,
    refund   stockcore.refunds,
    bought   bigint,
    refunded bigint
);
