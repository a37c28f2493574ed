-- The payment provider's word, as stockcore's webhook receiver (python -m payments) took
-- it. The receiver owns these tables; it changes orders only through OrderService
-- (ConfirmPayment), whose own record of a payment is stockcore.payments.

-- Every provider event the receiver acknowledged: one row per provider event id, written
-- in the transaction that decides what the event did, before the provider is answered
-- 2xx, so an acknowledged event survives a crash and a repeated delivery (a retry, a
-- duplicate, a replay within the signature's window) is counted here and does nothing
-- else. outcome (payments.events.Outcome): 1 PAID (a captured charge paid its order),
-- 2 TO_RETURN (a captured charge that paid nothing: see payments_to_return), 3 NOTED
-- (anything else the provider reports: a declined charge, a refund's outcome, a payout).
CREATE TABLE stockcore.payment_events (
    event_id          text        PRIMARY KEY,
    type              text        NOT NULL,
    -- The charge, refund or payout the event is about, and the order, when it names one.
    object_id         text        NOT NULL,
    order_id          text,
    amount_minor      bigint,
    currency          text,
    -- The provider's time of the event; ours of its first and last delivery.
    created_at        timestamptz NOT NULL,
    outcome           smallint    NOT NULL CHECK (outcome BETWEEN 1 AND 3),
    body              jsonb       NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    deliveries        int         NOT NULL DEFAULT 1 CHECK (deliveries >= 1),
    last_delivery_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (outcome = 3 OR (order_id IS NOT NULL AND amount_minor IS NOT NULL AND currency IS NOT NULL))
);
CREATE INDEX payment_events_by_object ON stockcore.payment_events (object_id);

-- Money the provider captured that paid no order, to be given back: one row per charge,
-- never deleted. reason (payments.events.ReturnReason): 1 ORDER_NOT_PAYABLE (the order
-- was cancelled, had expired, or another payment had paid it), 2 AMOUNT_DIFFERS (the
-- amount or currency captured is not the order's). returned_at is set once the refund
-- is made.
CREATE TABLE stockcore.payments_to_return (
    charge_id     text        PRIMARY KEY,
    order_id      text        NOT NULL,
    amount_minor  bigint      NOT NULL CHECK (amount_minor > 0),
    currency      text        NOT NULL,
    reason        smallint    NOT NULL CHECK (reason BETWEEN 1 AND 2),
    event_id      text        NOT NULL REFERENCES stockcore.payment_events (event_id),
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    returned_at   timestamptz
);
CREATE INDEX payments_to_return_waiting ON stockcore.payments_to_return (recorded_at)
    WHERE returned_at IS NULL;
