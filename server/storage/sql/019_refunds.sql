-- Refunds stockcore makes through the payment provider: one row per refund owed, created
-- in the transaction of the fact that owes it, and sent, retried and followed until the
-- provider settles it by the refund sender (python -m refunds). Functions:
-- live/refunds.sql.
--
-- refund_id is stockcore's, derived from (reason, source_id) ('rf_' and 32 hex digits of
-- their SHA-256), so the fact that owes a refund names it and owes it once; it is the
-- Idempotency-Key of every POST /v1/refunds of it, so a send repeated after a crash or a
-- lost answer makes one refund at the provider.
-- reason (refunds.store.RefundReason): 1 ORDER_CANCELLED (a paid order cancelled: source
-- is the order id, the amount its refund_owed_minor), 2 CHARGE_TO_RETURN (a captured
-- charge that paid nothing, stockcore.payments_to_return: source is the charge id).
-- state (refunds.store.RefundState): 1 REQUESTED (owed, not yet accepted by the
-- provider), 2 SENT (the provider accepted it: provider_refund_id is its id), 3 REFUNDED,
-- 4 FAILED (the provider failed it, or refused it for good). 3 and 4 are final.
CREATE TABLE stockcore.refunds (
    refund_id           text        PRIMARY KEY,
    reason              smallint    NOT NULL CHECK (reason BETWEEN 1 AND 2),
    source_id           text        NOT NULL,
    order_id            text        NOT NULL,
    -- The provider's charge the money goes back to (the order's payment_id).
    charge_id           text        NOT NULL,
    amount_minor        bigint      NOT NULL CHECK (amount_minor > 0),
    currency            text        NOT NULL,
    state               smallint    NOT NULL DEFAULT 1 CHECK (state BETWEEN 1 AND 4),
    provider_refund_id  text,
    -- Sends and polls begun (a claim counts one), when the next is due, and who holds the
    -- row meanwhile (a sender's lease; one that lapsed is free to claim again).
    attempts            int         NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    lease_owner         text,
    lease_until         timestamptz,
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    settled_at          timestamptz,
    UNIQUE (reason, source_id)
);
-- The sender's work list: refunds not settled, by when they are due.
CREATE INDEX refunds_due ON stockcore.refunds (next_attempt_at) WHERE state IN (1, 2);
-- The provider's webhooks name its refund id; one of ours per refund of theirs.
CREATE UNIQUE INDEX refunds_by_provider_id ON stockcore.refunds (provider_refund_id)
    WHERE provider_refund_id IS NOT NULL;
CREATE INDEX refunds_by_charge ON stockcore.refunds (charge_id);
CREATE INDEX refunds_by_order ON stockcore.refunds (order_id);

-- A provider event may now act on a refund: outcome 4 REFUND_SETTLED (refund.succeeded
-- or refund.failed of a refund stockcore made, recorded on its row). Refund events of
-- refunds stockcore did not make stay 3 NOTED.
ALTER TABLE stockcore.payment_events DROP CONSTRAINT payment_events_outcome_check;
ALTER TABLE stockcore.payment_events ADD CONSTRAINT payment_events_outcome_check
    CHECK (outcome BETWEEN 1 AND 4);

-- What is owed already when this migration runs is owed by a refund row too, due now:
-- every paid order cancelled, and every charge to return not yet returned.
INSERT INTO stockcore.refunds
       (refund_id, reason, source_id, order_id, charge_id, amount_minor, currency, created_at)
SELECT 'rf_' || left(encode(sha256(convert_to('1|' || o.order_id, 'UTF8')), 'hex'), 32), 1,
       o.order_id, o.order_id, o.payment_id, o.refund_owed_minor, o.currency, o.updated_at
  FROM stockcore.orders o
 WHERE o.refund_owed_minor > 0 AND o.payment_id IS NOT NULL;
INSERT INTO stockcore.refunds
       (refund_id, reason, source_id, order_id, charge_id, amount_minor, currency, created_at)
SELECT 'rf_' || left(encode(sha256(convert_to('2|' || r.charge_id, 'UTF8')), 'hex'), 32), 2,
       r.charge_id, r.order_id, r.charge_id, r.amount_minor, r.currency, r.recorded_at
  FROM stockcore.payments_to_return r
 WHERE r.returned_at IS NULL;
