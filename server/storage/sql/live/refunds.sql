-- Refunds (019_refunds.sql, 022_line_refunds.sql): owed in the transaction of the fact
-- that owes them, claimed and sent by the refund sender (python -m refunds,
-- refunds/worker.py), settled by the provider's webhook (the receiver, python -m
-- payments) or by the sender's poll. States: 1 REQUESTED, 2 SENT, 3 REFUNDED, 4 FAILED;
-- reasons: 1 ORDER_CANCELLED, 2 CHARGE_TO_RETURN, 3 LINE_REFUNDED (RefundLine:
-- refund_lines).
--
-- Locks (rank 9 of the lock order at the top of orders.sql): a refund row is claimed
-- under the claim of the fact that owes it (its order's lock in record_changes and
-- refund_lines, its charge's in record_payment_event); only a line refund's id, the
-- caller's, may be claimed by two transactions at once, and refund_lines claims those in
-- id order. claim_refunds skips locked rows; record_refund_attempt and
-- record_refund_event lock one row, then append its order's event and set its charge's
-- payments_to_return.returned_at, rows nobody holding them waits for a refund.
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

-- RefundLine for a batch of stockcore.line_refund_request (022_line_refunds.sql): each
-- owes back `quantity` units of the line `sku` of a paid order, at the line's unit price,
-- to the charge that paid it, as a refund of reason 3 whose source is the caller's
-- line_refund_id, and posts LINE_REFUND_OWED in the ledger, all decided under the orders'
-- locks. No stock moves and the order's status, version and history stay: only the line's
-- refunded units (orders.refunded_quantities) grow. One stockcore.line_refund_result per
-- request, in request order. Codes: 0 refunded (refund REQUESTED), 1 repeat (the same id
-- with the same order, SKU, quantity and note: ord and refund as they are now), 2 unknown
-- order, 3 the id belongs to another refund, 4 the order is not paid or is cancelled (ord
-- shows its status), 5 no line of that SKU (ord), 6 the line cost nothing, 7 more units
-- than the line has left to refund (bought and refunded say how many).
CREATE OR REPLACE FUNCTION stockcore.refund_lines(
    p_requests stockcore.line_refund_request[], OUT results stockcore.line_refund_result[]
)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE
    v_now     timestamptz := now();
    n         int := coalesce(array_length(p_requests, 1), 0);
    orders    stockcore.orders[];
    known     stockcore.refunds[];
    made      stockcore.refunds[];
    q         stockcore.line_refund_request;
    o         stockcore.orders;
    f         stockcore.refunds;
    k         int;
    l         int;
    v_done    bigint;
    v_amount  bigint;
    -- Per request: its code, its order's place in `orders`, the refund it repeats (one
    -- committed before), the request of this batch that makes the refund it makes or
    -- repeats, and a new refund's amount.
    codes     smallint[] := array_fill(NULL::smallint, ARRAY[n]);
    at_order  int[] := array_fill(NULL::int, ARRAY[n]);
    repeats   stockcore.refunds[] := array_fill(NULL::stockcore.refunds, ARRAY[n]);
    maker     int[] := array_fill(NULL::int, ARRAY[n]);
    amounts   bigint[] := array_fill(NULL::bigint, ARRAY[n]);
BEGIN
    SELECT x.orders INTO orders
      FROM stockcore.lock_orders(ARRAY(SELECT u.order_id FROM unnest(p_requests) u), false) x;
    -- Ids of committed refunds. One committed meanwhile fails the insert below (a unique
    -- violation, which the store runs the batch again after): it is found here then.
    SELECT coalesce(array_agg(x::stockcore.refunds ORDER BY x.source_id), '{}') INTO known
      FROM stockcore.refunds x
     WHERE x.reason = 3
       AND x.source_id = ANY (ARRAY(SELECT u.line_refund_id FROM unnest(p_requests) u));
    FOR i IN 1 .. n LOOP
        q := p_requests[i];
        FOR j IN 1 .. cardinality(orders) LOOP
            IF (orders[j]).order_id = q.order_id THEN at_order[i] := j; EXIT; END IF;
        END LOOP;
        k := at_order[i];
        f := NULL;
        FOR j IN 1 .. cardinality(known) LOOP
            IF (known[j]).source_id = q.line_refund_id THEN f := known[j]; EXIT; END IF;
        END LOOP;
        IF f.refund_id IS NOT NULL THEN
            codes[i] := CASE WHEN (f.order_id, f.sku, f.quantity, f.note)
                                  IS NOT DISTINCT FROM (q.order_id, q.sku, q.quantity, q.note)
                             THEN 1 ELSE 3 END;
            repeats[i] := f;
            CONTINUE;
        END IF;
        -- The id of a refund an earlier request of this batch makes: the same request
        -- again, or another.
        FOR j IN 1 .. i - 1 LOOP
            IF maker[j] = j AND (p_requests[j]).line_refund_id = q.line_refund_id THEN
                codes[i] := CASE WHEN ((p_requests[j]).order_id, (p_requests[j]).sku,
                                       (p_requests[j]).quantity, (p_requests[j]).note)
                                      IS NOT DISTINCT FROM (q.order_id, q.sku, q.quantity, q.note)
                                 THEN 1 ELSE 3 END;
                maker[i] := j;
                EXIT;
            END IF;
        END LOOP;
        CONTINUE WHEN codes[i] IS NOT NULL;
        IF k IS NULL THEN
            codes[i] := 2;
            CONTINUE;
        END IF;
        o := orders[k];
        l := array_position(o.skus, q.sku);
        IF o.status NOT IN (2, 3, 4, 5) THEN
            codes[i] := 4;
        ELSIF l IS NULL THEN
            codes[i] := 5;
        ELSIF o.unit_prices[l] = 0 THEN
            codes[i] := 6;
        ELSE
            v_done := coalesce(o.refunded_quantities[l], 0);
            v_amount := q.quantity * o.unit_prices[l];
            -- A line's units bound what it owes back; what was paid bounds them all.
            IF q.quantity > o.quantities[l] - v_done
               OR v_amount > o.paid_minor - o.refund_owed_minor - stockcore.line_refunds_minor(o) THEN
                codes[i] := 7;
                CONTINUE;
            END IF;
            IF o.refunded_quantities IS NULL THEN
                o.refunded_quantities := array_fill(0::bigint, ARRAY[cardinality(o.skus)]);
            END IF;
            o.refunded_quantities[l] := v_done + q.quantity;
            orders[k] := o;
            codes[i] := 0;
            maker[i] := i;
            amounts[i] := v_amount;
        END IF;
    END LOOP;

    -- The new refunds, their ids claimed in id order, each to its order's charge.
    WITH ins AS (
        INSERT INTO stockcore.refunds
               (refund_id, reason, source_id, order_id, charge_id, amount_minor, currency,
                sku, quantity, note, caller, request_id, created_at, next_attempt_at)
        SELECT stockcore.refund_id(3::smallint, rq.line_refund_id), 3, rq.line_refund_id,
               rq.order_id, od.payment_id, amounts[i], od.currency, rq.sku, rq.quantity,
               rq.note, rq.caller, rq.request_id, v_now, v_now
          FROM generate_subscripts(p_requests, 1) AS i
         CROSS JOIN LATERAL (SELECT (p_requests[i]).*) rq
         CROSS JOIN LATERAL (SELECT (orders[at_order[i]]).*) od
         WHERE codes[i] = 0
         ORDER BY rq.line_refund_id
        RETURNING *
    )
    SELECT coalesce(array_agg(ins::stockcore.refunds), '{}') INTO made FROM ins;
    UPDATE stockcore.orders x SET refunded_quantities = y.refunded_quantities
      FROM unnest(orders) y
     WHERE x.order_id = y.order_id
       AND x.refunded_quantities IS DISTINCT FROM y.refunded_quantities;
    INSERT INTO stockcore.ledger_transfers
           (kind, source_id, order_id, debit_account, credit_account, amount_minor, currency,
            posted_at)
    SELECT 9, m.source_id, m.order_id, 3, 4, m.amount_minor, m.currency, m.created_at
      FROM unnest(made) m
     ORDER BY m.source_id;

    results := array_fill(NULL::stockcore.line_refund_result, ARRAY[n]);
    FOR i IN 1 .. n LOOP
        k := at_order[i];
        f := repeats[i];
        IF maker[i] IS NOT NULL THEN
            FOR j IN 1 .. cardinality(made) LOOP
                IF (made[j]).source_id = (p_requests[i]).line_refund_id THEN
                    f := made[j];
                    EXIT;
                END IF;
            END LOOP;
        END IF;
        l := array_position((orders[k]).skus, (p_requests[i]).sku);
        results[i] := CASE
            WHEN codes[i] IN (0, 1)
                THEN ROW(codes[i], orders[k], f, NULL, NULL)::stockcore.line_refund_result
            WHEN codes[i] IN (4, 5, 6)
                THEN ROW(codes[i], orders[k], NULL, NULL, NULL)::stockcore.line_refund_result
            WHEN codes[i] = 7
                THEN ROW(7, orders[k], NULL, (orders[k]).quantities[l],
                         coalesce((orders[k]).refunded_quantities[l], 0))::stockcore.line_refund_result
            ELSE ROW(codes[i], NULL, NULL, NULL, NULL)::stockcore.line_refund_result
        END;
    END LOOP;
END $$;

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
                    'provider_refund_id', r.provider_refund_id, 'at', now(),
                    'sku', r.sku, 'quantity', r.quantity, 'note', r.note,
                    'line_refund_id', CASE WHEN r.reason = 3 THEN r.source_id END))),
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
-- NULL, recording nothing, when a refund of ours for that charge that was sent (a claim
-- counts its attempts) is not yet bound to a provider id (the sender's send is under way
-- or was cut short: the receiver asks the provider to deliver the event again, by when
-- the sender's repeated send has bound it). One never sent cannot be the provider's: a
-- charge's other refunds owed meanwhile (its lines refunded) do not hold the event back.
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
                     AND x.state IN (1, 2) AND x.attempts > 0) THEN
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
