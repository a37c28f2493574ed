-- The payment provider's events as stockcore's webhook receiver (python -m payments)
-- records them: the tables and what their codes mean are 016_payment_events.sql's.
-- Outcomes: 1 PAID, 2 TO_RETURN, 3 NOTED, 4 REFUND_SETTLED (refunds.sql); reasons to return: 1 ORDER_NOT_PAYABLE,
-- 2 AMOUNT_DIFFERS (payments.events).
--
-- The receiver decides what an event did by calling OrderService (ConfirmPayment is
-- idempotent on the charge id, so deciding again after a crash gives the same answer),
-- then records it here, and answers the provider 2xx only after this commits.

-- Record one delivered event, once per event id: true when it is new. A new TO_RETURN
-- event also records its charge as money to return (once per charge), posts it in the
-- ledger (CHARGE_TO_RETURN, 017_ledger.sql) and owes its refund (019_refunds.sql), in the
-- same transaction. A delivery of an event already recorded (a concurrent duplicate
-- waits here for the first to commit) is counted and changes nothing else. It claims the
-- event id, then the charge id, then the charge's refund (lock order: the top of
-- orders.sql), and takes no other lock.
CREATE OR REPLACE FUNCTION stockcore.record_payment_event(
    p_event_id text, p_type text, p_object_id text, p_order_id text, p_amount_minor bigint,
    p_currency text, p_created_at timestamptz, p_outcome smallint, p_reason smallint,
    p_body jsonb
) RETURNS boolean
LANGUAGE plpgsql SET jit = off AS $$
BEGIN
    INSERT INTO stockcore.payment_events
           (event_id, type, object_id, order_id, amount_minor, currency, created_at, outcome, body)
    VALUES (p_event_id, p_type, p_object_id, p_order_id, p_amount_minor, p_currency,
            p_created_at, p_outcome, p_body)
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN
        UPDATE stockcore.payment_events
           SET deliveries = deliveries + 1, last_delivery_at = now()
         WHERE event_id = p_event_id;
        RETURN false;
    END IF;
    IF p_outcome = 2 THEN
        INSERT INTO stockcore.payments_to_return
               (charge_id, order_id, amount_minor, currency, reason, event_id)
        VALUES (p_object_id, p_order_id, p_amount_minor, p_currency, p_reason, p_event_id)
        ON CONFLICT (charge_id) DO NOTHING;
        IF FOUND THEN
            INSERT INTO stockcore.ledger_transfers
                   (kind, source_id, order_id, debit_account, credit_account, amount_minor,
                    currency)
            VALUES (3, p_object_id, p_order_id, 1, 8, p_amount_minor, p_currency);
            -- ... and is a refund to make (live/refunds.sql), in this transaction.
            PERFORM stockcore.owe_charge_refund(p_object_id, p_order_id, p_amount_minor,
                                                p_currency);
        END IF;
    END IF;
    RETURN true;
END $$;

-- Removed: the receiver counts another delivery through record_payment_event.
DROP FUNCTION IF EXISTS stockcore.count_payment_event_delivery(text);
