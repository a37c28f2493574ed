-- Refunds (019_refunds.sql): owed in the transaction of the fact that owes them, claimed
-- and sent by the refund sender (python -m refunds, refunds/worker.py), settled by the
-- provider's webhook (the receiver, python -m payments) or by the sender's poll.
-- States: 1 REQUESTED, 2 SENT, 3 REFUNDED, 4 FAILED; reasons: 1 ORDER_CANCELLED,
-- 2 CHARGE_TO_RETURN.
--
-- Locks (rank 8 of the lock order at the top of orders.sql): a refund row is claimed
-- under the claim of the fact that owes it (its order's lock in record_changes, its
-- charge's in record_payment_event), so nobody waits for that insert. claim_refunds skips
-- locked rows; record_refund_attempt and settle_refund_event lock one row, then append
-- its order's event and set its charge's payments_to_return.returned_at, rows nobody
-- holding them waits for a refund.
--
-- The order's side: refunds are not statuses, so they are order events only (types 8
-- REFUND_REQUESTED, 9 REFUNDED, 10 REFUND_FAILED: server.domain.orders.EventType), never
-- rows of the status history, and they change no order row: the event carries the order
-- as it is, at its current version, and the refund; its id is
-- "<order_id>/<order_version>/refund/<refund_id>/<type>".

-- The id of the refund a fact owes: the same fact, the same id.
CREATE OR REPLACE FUNCTION stockcore.refund_id(p_reason smallint, p_source_id text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'rf_' || left(encode(sha256(convert_to(p_reason || '|' || p_source_id, 'UTF8')), 'hex'), 32)
$$;

-- The refunds owed by order changes already decided under their orders' locks
-- (record_changes): each paid order cancelled owes its refund_owed_minor back to the
-- charge that paid it, once.
CREATE OR REPLACE FUNCTION stockcore.owe_order_refunds(
    p_orders stockcore.orders[], p_from smallint[]
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO stockcore.refunds
           (refund_id, reason, source_id, order_id, charge_id, amount_minor, currency,
            created_at, next_attempt_at)
    SELECT stockcore.refund_id(1::smallint, (o).order_id), 1, (o).order_id, (o).order_id,
           (o).payment_id, (o).refund_owed_minor, (o).currency, (o).updated_at, (o).updated_at
      FROM (SELECT p_orders[i] AS o, p_from[i] AS from_status
              FROM generate_subscripts(p_orders, 1) AS i) x
     WHERE x.from_status = 2 AND (o).status = 6 AND (o).refund_owed_minor > 0
       AND (o).payment_id IS NOT NULL
    ORDER BY (o).order_id
$$;

-- The refund of a charge to return, once (record_payment_event, after its claim).
CREATE OR REPLACE FUNCTION stockcore.owe_charge_refund(
    p_charge_id text, p_order_id text, p_amount_minor bigint, p_currency text
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO stockcore.refunds
           (refund_id, reason, source_id, order_id, charge_id, amount_minor, currency)
    VALUES (stockcore.refund_id(2::smallint, p_charge_id), 2, p_charge_id, p_order_id,
            p_charge_id, p_amount_minor, p_currency)
    ON CONFLICT (reason, source_id) DO NOTHING
$$;

-- Append the order event of a refund (8 REFUND_REQUESTED, 9 REFUNDED, 10 REFUND_FAILED),
-- once per refund and type; nothing when the refund names no order stockcore has (a
-- charge to return may name one it never had).
CREATE OR REPLACE FUNCTION stockcore.append_refund_event(r stockcore.refunds, p_type smallint)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    o stockcore.orders;
BEGIN
    SELECT * INTO o FROM stockcore.orders x WHERE x.order_id = r.order_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO stockcore.order_events
           (event_id, order_id, order_version, type, customer_id, body, created_at)
    VALUES (o.order_id || '/' || o.version || '/refund/' || r.refund_id || '/' || p_type,
            o.order_id, o.version, p_type, o.customer_id,
            jsonb_build_object(
                'order', jsonb_strip_nulls(to_jsonb(o) - 'fingerprint'),
                'refund', jsonb_strip_nulls(jsonb_build_object(
                    'refund_id', r.refund_id, 'reason', r.reason, 'charge_id', r.charge_id,
                    'amount_minor', r.amount_minor, 'currency', r.currency, 'state', r.state,
                    'provider_refund_id', r.provider_refund_id, 'at', now()))),
            now())
    ON CONFLICT (event_id) DO NOTHING;
    PERFORM pg_notify('stockcore_order_events', '');
END $$;

-- Move a locked refund to a final state (3 REFUNDED, 4 FAILED) with its event; a charge
-- to return refunded is returned. Nothing when it is final already.
CREATE OR REPLACE FUNCTION stockcore.finish_refund(
    r stockcore.refunds, p_state smallint, p_provider_refund_id text, p_error text
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF r.state IN (3, 4) THEN
        RETURN;
    END IF;
    UPDATE stockcore.refunds x
       SET state = p_state, provider_refund_id = coalesce(p_provider_refund_id, x.provider_refund_id),
           settled_at = now(), lease_owner = NULL, lease_until = NULL,
           last_error = coalesce(p_error, x.last_error)
     WHERE x.refund_id = r.refund_id
    RETURNING * INTO r;
    PERFORM stockcore.append_refund_event(r, CASE p_state WHEN 3 THEN 9 ELSE 10 END::smallint);
    IF p_state = 3 AND r.reason = 2 THEN
        UPDATE stockcore.payments_to_return SET returned_at = now()
         WHERE charge_id = r.charge_id AND returned_at IS NULL;
    END IF;
END $$;

-- Up to p_limit refunds due (REQUESTED to send, SENT to poll) that no sender holds,
-- leased to p_owner for p_lease_s seconds, each attempt counted; oldest due first.
CREATE OR REPLACE FUNCTION stockcore.claim_refunds(p_owner text, p_limit int, p_lease_s float8)
RETURNS SETOF stockcore.refunds
LANGUAGE sql AS $$
    UPDATE stockcore.refunds r
       SET lease_owner = p_owner, lease_until = now() + make_interval(secs => p_lease_s),
           attempts = r.attempts + 1
      FROM (SELECT x.refund_id FROM stockcore.refunds x
             WHERE x.state IN (1, 2) AND x.next_attempt_at <= now()
               AND (x.lease_until IS NULL OR x.lease_until < now())
             ORDER BY x.next_attempt_at, x.refund_id
             LIMIT p_limit FOR UPDATE SKIP LOCKED) due
     WHERE r.refund_id = due.refund_id
    RETURNING r.*
$$;

-- What one send or poll of a refund leased to p_owner learnt. p_outcome: 1 PENDING (the
-- provider has it as p_provider_refund_id, not settled: SENT, with REFUND_REQUESTED the
-- first time, polled after p_retry_s), 2 SUCCEEDED, 3 FAILED (settled, or refused for
-- good), 4 RETRY (nothing known: due again after p_retry_s). The lease ends. False when
-- the lease is no longer p_owner's (it lapsed and another sender took the refund; a
-- settled refund is never changed here).
CREATE OR REPLACE FUNCTION stockcore.record_refund_attempt(
    p_refund_id text, p_owner text, p_outcome smallint, p_provider_refund_id text,
    p_retry_s float8, p_error text
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    r stockcore.refunds;
BEGIN
    SELECT * INTO r FROM stockcore.refunds x WHERE x.refund_id = p_refund_id FOR UPDATE;
    IF NOT FOUND OR r.lease_owner IS DISTINCT FROM p_owner OR r.state IN (3, 4) THEN
        RETURN false;
    END IF;
    IF p_outcome IN (1, 2, 3) AND p_provider_refund_id IS NOT NULL AND r.state = 1 THEN
        UPDATE stockcore.refunds x
           SET state = 2, provider_refund_id = p_provider_refund_id, sent_at = now()
         WHERE x.refund_id = r.refund_id
        RETURNING * INTO r;
        PERFORM stockcore.append_refund_event(r, 8::smallint);
    END IF;
    IF p_outcome IN (2, 3) THEN
        PERFORM stockcore.finish_refund(r, (p_outcome + 1)::smallint, p_provider_refund_id, p_error);
    ELSE
        UPDATE stockcore.refunds x
           SET next_attempt_at = now() + make_interval(secs => p_retry_s),
               lease_owner = NULL, lease_until = NULL,
               last_error = CASE WHEN p_outcome = 4 THEN p_error ELSE x.last_error END
         WHERE x.refund_id = r.refund_id;
    END IF;
    RETURN true;
END $$;

-- Record a refund.succeeded or refund.failed event of the provider (p_object_id: its
-- refund id), once per event id, as record_payment_event records the others, and settle
-- the refund of ours it reports. The outcome: 4 REFUND_SETTLED (ours, now final), 3 NOTED
-- (not a refund of ours), or the outcome recorded already for an event delivered again;
-- NULL, recording nothing, when a refund of ours for that charge is not yet bound to a
-- provider id (the sender's send is under way or was cut short: the receiver asks the
-- provider to deliver the event again, by when the sender's repeated send has bound it).
CREATE OR REPLACE FUNCTION stockcore.record_refund_event(
    p_event_id text, p_type text, p_object_id text, p_charge_id text, p_order_id text,
    p_amount_minor bigint, p_currency text, p_created_at timestamptz, p_body jsonb
) RETURNS smallint
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    r         stockcore.refunds;
    v_outcome smallint;
BEGIN
    SELECT * INTO r FROM stockcore.refunds x WHERE x.provider_refund_id = p_object_id;
    IF FOUND THEN
        v_outcome := 4;
    ELSIF EXISTS (SELECT FROM stockcore.refunds x
                   WHERE x.charge_id = p_charge_id AND x.provider_refund_id IS NULL
                     AND x.state IN (1, 2)) THEN
        RETURN NULL;
    ELSE
        v_outcome := 3;
    END IF;
    INSERT INTO stockcore.payment_events
           (event_id, type, object_id, order_id, amount_minor, currency, created_at, outcome, body)
    VALUES (p_event_id, p_type, p_object_id, p_order_id, p_amount_minor, p_currency,
            p_created_at, v_outcome, p_body)
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN
        UPDATE stockcore.payment_events
           SET deliveries = deliveries + 1, last_delivery_at = now()
         WHERE event_id = p_event_id
        RETURNING outcome INTO v_outcome;
        RETURN v_outcome;
    END IF;
    IF v_outcome = 4 THEN
        SELECT * INTO r FROM stockcore.refunds x WHERE x.refund_id = r.refund_id FOR UPDATE;
        PERFORM stockcore.finish_refund(
            r, CASE WHEN p_type = 'refund.succeeded' THEN 3 ELSE 4 END::smallint, p_object_id,
            CASE WHEN p_type = 'refund.succeeded' THEN NULL ELSE 'the provider failed the refund' END);
    END IF;
    RETURN v_outcome;
END $$;
