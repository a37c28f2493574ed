-- Orders: CreateOrder (holding stock, or taking over a held reservation), ConfirmPayment,
-- CancelOrder, ShipOrder, RecordInTransit, RecordDelivery and the expiry sweep (RefundLine,
-- which changes no status, is refunds.sql's refund_lines). Each batch
-- of requests of one kind is one call of one function that takes its locks, decides every
-- request by the status machine, writes the order, status-history, outbox and ledger rows,
-- and returns one typed row per request; the server only validates requests before and
-- maps the rows to answers after. Nothing that decides (a payment id is unused, a hold is
-- not an order's) is read outside these locks. The tables are 002_orders.sql's; the
-- status machine is stockcore.order_transitions, which the migrator copies from
-- server.domain.orders at every start.
--
-- The lock order, for every function of the live SQL. A transaction takes locks of one
-- rank after another, down this list, and within a rank in the order given; it never
-- waits for a lock of a rank above one it holds. Two transactions then never wait for
-- each other (no deadlock). "Claiming" an id is inserting its row: the insert waits for
-- a transaction inserting the same id, and holds the id against others until commit.
--
--   1. Fulfilment rows, by order id: record_fulfilments, bind_fulfilments,
--      scan_stale_fulfilments (after its advisory lock, which only it takes) lock theirs
--      before changing them; fulfilment_paid, fulfilment_cancelled and
--      replay_fulfilment_dead_letter touch one; claim_fulfilments skips locked rows.
--   2. Orders, by id: lock_orders (pay_orders, cancel_orders, advance_orders,
--      refund_lines), cancel_orders_as, record_fulfilments (after rank 1); expire_due
--      skips locked ones.
--      A new order's id is claimed by its hold (rank 3, same id): create_step inserts
--      an order only for a hold it inserted itself, order_holds only for a hold it
--      locked, so that insert never waits.
--   3. Reservations, by id: lock_orders (the orders' holds), finish_holds,
--      set_lines_step, order_holds (which then inserts the orders of the reservations it
--      locked: rank 2, but no other transaction can be inserting those); expire_due
--      skips locked ones. New ids are claimed in batch order by hold_step (Reserve,
--      CreateOrder); its second pass claims every id of the batch before rank 5. (A
--      lock on a row and a claim of an id not yet committed never wait for each other.)
--   4. Payment ids, by payment id: pay_orders claims them all before it decides.
--      Change ids of SetReservationLine: set_lines_step inserts those it applied before
--      rank 5, and its second pass claims them all before it locks stock rows.
--   5. Stock rows, by (shard, sku), last and briefly (inventory.sql says why): read_stock
--      with p_lock, take_stock and apply_stock (every batch function), adjust (one row).
--   6. Rows nobody waits for while holding a lock above: an adjustment (adjust claims a
--      caller's key after its one stock row and waits for nothing after; a cancel's rows
--      are its order's own, covered by the order's lock), the movements, status history,
--      events and fulfilment history (appended, never contended), and the outbox
--      watermark and cursors (the relay alone, under its session's advisory lock).
--   7. Payment provider events, by event id, then payments to return, by charge id:
--      record_payment_event (payments.sql) claims them, then its charge's refund (rank 8).
--   8. The reconciler's settlement cursor row (reconciliation.sql): record_settlement_page
--      and record_statements lock it first, then claim settlement transaction ids and
--      ledger transfers of the feed (kinds 4-8, whose ids no other function posts) or
--      append statements and exceptions, and update the open exceptions they supersede
--      (no other function but resolve_reconciliation_exception, which locks that one row
--      alone, touches them). They take no lock of the ranks above.
--   9. Refunds, by refund id (refunds.sql): a new one is claimed under its fact's claim
--      (its order's lock in record_changes, its charge's in record_payment_event), so that
--      insert never waits; claim_refunds skips locked rows; record_refund_attempt and
--      record_refund_event (after its event id) lock one, then append its order's event
--      and mark its charge to return returned, rows nobody waits for a refund while
--      holding. A line refund's id is the caller's, and may be sent for two orders at
--      once: refund_lines claims the ids of its batch after every order lock it takes, in
--      one statement, in id order (as pay_orders claims payment ids), so it waits only for
--      a transaction claiming the same id, which waits for no lock it holds.
--
-- Every function returns the levels of the SKUs it touched (stockcore.stock_level, for
-- the Redis mirror) and, when it wrote order events, notifies channel
-- stockcore_order_events at commit. A request's outcome is a stockcore.order_result
-- (003_checkout.sql): its code (given per function), ord, the order after the call (NULL
-- when unknown or not created), and detail, which says more about a refusal.
-- Status values are server.domain.orders.OrderStatus: 1 PENDING_PAYMENT, 2 PAID,
-- 3 SHIPPED, 4 IN_TRANSIT, 5 DELIVERED, 6 CANCELLED, 7 EXPIRED.

-- CreateOrder for a batch of stockcore.order_request (013_order_requests.sql), sorted by
-- order id. Decided against levels read without a lock, and again with the stock rows
-- locked when a take no longer fits, as hold_stock is. Codes: 0 created, 1 repeat (ord
-- is the order as it is now), 2 the id belongs to a different order, 3 rejected
-- (unknown or short SKUs), 4 the id belongs to a plain reservation.
DROP FUNCTION IF EXISTS stockcore.create_orders(text[], bytea[], bigint[], text[], int[], int[], smallint[], text[], bigint[], bigint[], text[], text[], bigint[], bytea[], text[]);
CREATE OR REPLACE FUNCTION stockcore.create_orders(
    p_orders stockcore.order_request[],
    OUT results stockcore.order_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE
    c          record;
    r          stockcore.order_request;
    l          stockcore.order_line_request;
    ids        text[] := '{}';
    hold_fps   bytea[] := '{}';
    ttls       bigint[] := '{}';
    callers    text[] := '{}';
    request_ids text[] := '{}';
    customers  text[] := '{}';
    currencies text[] := '{}';
    totals     bigint[] := '{}';
    fps        bytea[] := '{}';
    first      int[] := '{}';
    counts     int[] := '{}';
    shards     smallint[] := '{}';
    skus       text[] := '{}';
    qtys       bigint[] := '{}';
    prices     bigint[] := '{}';
BEGIN
    -- create_step's layout: per-order arrays, and the lines of all orders in one run with
    -- each order's first position and count. A loop of appends: cheaper for a batch's
    -- handful of orders than unnest-and-aggregate statements (BENCHMARKS.md).
    FOREACH r IN ARRAY p_orders LOOP
        ids := ids || r.order_id;
        hold_fps := hold_fps || r.hold_fingerprint;
        ttls := ttls || r.ttl_ms;
        callers := callers || r.caller;
        request_ids := request_ids || r.request_id;
        customers := customers || r.customer_id;
        currencies := currencies || r.currency;
        totals := totals || r.total;
        fps := fps || r.fingerprint;
        first := first || (cardinality(skus) + 1);
        counts := counts || cardinality(r.lines);
        FOREACH l IN ARRAY r.lines LOOP
            shards := shards || l.shard;
            skus := skus || l.sku;
            qtys := qtys || l.quantity;
            prices := prices || l.unit_price;
        END LOOP;
    END LOOP;
    BEGIN
        SELECT * INTO c FROM stockcore.create_step(ids, hold_fps, ttls, callers, first,
            counts, shards, skus, qtys, prices, customers, currencies, totals, fps,
            request_ids, false);
    EXCEPTION WHEN serialization_failure THEN
        SELECT * INTO c FROM stockcore.create_step(ids, hold_fps, ttls, callers, first,
            counts, shards, skus, qtys, prices, customers, currencies, totals, fps,
            request_ids, true);
    END;
    results := c.results;
    levels := c.levels;
END $$;

-- create_orders' work, deciding against levels read with or without locks (hold_step).
CREATE OR REPLACE FUNCTION stockcore.create_step(
    p_ids text[], p_fingerprints bytea[], p_ttl_ms bigint[], p_callers text[],
    p_first int[], p_count int[], p_shards smallint[], p_skus text[], p_qtys bigint[],
    p_prices bigint[], p_customers text[], p_currencies text[], p_totals bigint[],
    p_order_fingerprints bytea[], p_request_ids text[], p_lock boolean,
    OUT results stockcore.order_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql AS $$
DECLARE
    n        int := coalesce(array_length(p_ids, 1), 0);
    st       record;
    h        stockcore.hold_result;
    fresh    stockcore.orders[] := '{}';
    fresh_i  int[] := '{}';
    repeats  text[] := '{}';
    found    stockcore.orders[];
    o        stockcore.orders;
BEGIN
    SELECT * INTO st FROM stockcore.hold_step(p_ids, p_fingerprints, p_ttl_ms, p_callers,
        p_customers, p_first, p_count, p_shards, p_skus, p_qtys, p_lock);
    results := array_fill(NULL::stockcore.order_result, ARRAY[n]);
    FOR i IN 1 .. n LOOP
        h := st.results[i];
        IF h.code = 0 THEN
            o := ROW(p_ids[i], p_customers[i], 1, ARRAY[1]::smallint[], 1, p_currencies[i],
                     p_skus[p_first[i] : p_first[i] + p_count[i] - 1],
                     p_qtys[p_first[i] : p_first[i] + p_count[i] - 1],
                     p_prices[p_first[i] : p_first[i] + p_count[i] - 1], p_totals[i],
                     p_order_fingerprints[i], (h.reservation).created_at,
                     (h.reservation).expires_at, (h.reservation).created_at,
                     NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL,
                     NULL)::stockcore.orders;
            fresh := fresh || o;
            fresh_i := fresh_i || i;
        ELSIF h.code IN (1, 2) THEN
            repeats := repeats || p_ids[i];
        ELSE
            results[i] := ROW(h.code, NULL, NULL, h.short_skus, h.short_available,
                              h.unknown_skus)::stockcore.order_result;
        END IF;
    END LOOP;

    PERFORM stockcore.record_changes(
        fresh, array_fill(NULL::smallint, ARRAY[cardinality(fresh)]),
        array_fill(1::smallint, ARRAY[cardinality(fresh)]),
        (SELECT coalesce(array_agg(p_callers[i] ORDER BY a.k), '{}') FROM unnest(fresh_i) WITH ORDINALITY AS a(i, k)),
        array_fill('created'::text, ARRAY[cardinality(fresh)]),
        (SELECT coalesce(array_agg(p_request_ids[i] ORDER BY a.k), '{}') FROM unnest(fresh_i) WITH ORDINALITY AS a(i, k)),
        true);
    FOR k IN 1 .. cardinality(fresh_i) LOOP
        results[fresh_i[k]] := ROW(0, fresh[k], NULL, NULL, NULL, NULL)::stockcore.order_result;
    END LOOP;

    -- The id already holds: the same order again (answer with it as it is now), a
    -- different order (2), or a plain reservation (4).
    IF cardinality(repeats) > 0 THEN
        SELECT coalesce(array_agg(x ORDER BY x.order_id), '{}') INTO found
          FROM stockcore.orders x WHERE x.order_id = ANY (repeats);
        FOR i IN 1 .. n LOOP
            CONTINUE WHEN (st.results[i]).code NOT IN (1, 2);
            results[i] := ROW(4, NULL, NULL, NULL, NULL, NULL)::stockcore.order_result;
            FOR e IN 1 .. cardinality(found) LOOP
                IF (found[e]).order_id = p_ids[i] THEN
                    results[i] := CASE WHEN (found[e]).fingerprint = p_order_fingerprints[i]
                        THEN ROW(1, found[e], NULL, NULL, NULL, NULL)::stockcore.order_result
                        ELSE ROW(2, NULL, NULL, NULL, NULL, NULL)::stockcore.order_result END;
                END IF;
            END LOOP;
        END LOOP;
    END IF;

    levels := stockcore.take_stock(st.shards, st.skus, st.takes, st.read, now());
END $$;

-- CreateOrder from held reservations (CreateOrderRequest.reservation_id), for a batch of
-- stockcore.order_request sorted by order id, each order's id the id of the plain
-- reservation it takes over. Decided under the reservations' locks: the reservation
-- becomes the order's hold as it is, its units already held (no stock row changes), now
-- until the order's payment deadline (ttl_ms from now) and for the order's customer.
-- p_customers[i] is the customer request i is bound to (NULL for a service's). Codes:
-- 0 created, 1 repeat (ord as it is now), 2 the id belongs to a different order,
-- 3 unknown reservation, 4 not held for the order's customer (a reservation held for a
-- customer becomes only that customer's order; a service's, only by a service's
-- request), 5 not HELD, or its hold lapsed (hold shows it), 6 the reservation's lines
-- are not the order's (hold shows them).
CREATE OR REPLACE FUNCTION stockcore.order_holds(
    p_orders stockcore.order_request[], p_customers text[],
    OUT results stockcore.hold_order_result[]
)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE
    v_now    timestamptz := now();
    n        int := coalesce(array_length(p_orders, 1), 0);
    ids      text[];
    holds    stockcore.reservations[];
    found    stockcore.orders[];
    q        stockcore.order_request;
    r        stockcore.reservations;
    o        stockcore.orders;
    fresh    stockcore.orders[] := '{}';
    fresh_by text[] := '{}';
    fresh_rq text[] := '{}';
    taken    stockcore.reservations[] := '{}';
BEGIN
    SELECT coalesce(array_agg(u.order_id), '{}') INTO ids FROM unnest(p_orders) u;
    SELECT coalesce(array_agg(x::stockcore.reservations ORDER BY x.reservation_id), '{}') INTO holds
      FROM (SELECT * FROM stockcore.reservations x
             WHERE x.reservation_id = ANY (ids) ORDER BY x.reservation_id FOR UPDATE) x;
    -- Read under those locks: no order of these ids can be made meanwhile (its hold is
    -- one of them, locked here; create_step makes orders only of holds it inserts).
    SELECT coalesce(array_agg(x::stockcore.orders ORDER BY x.order_id), '{}') INTO found
      FROM stockcore.orders x WHERE x.order_id = ANY (ids);
    results := array_fill(NULL::stockcore.hold_order_result, ARRAY[n]);
    FOR i IN 1 .. n LOOP
        q := p_orders[i];
        r := NULL;
        FOR j IN 1 .. cardinality(holds) LOOP
            IF (holds[j]).reservation_id = q.order_id THEN r := holds[j]; EXIT; END IF;
        END LOOP;
        IF r.reservation_id IS NULL THEN
            results[i] := ROW(3, NULL, NULL)::stockcore.hold_order_result;
            CONTINUE;
        ELSIF r.customer_id IS DISTINCT FROM q.customer_id
              AND (p_customers[i] IS NOT NULL OR r.customer_id IS NOT NULL) THEN
            results[i] := ROW(4, NULL, NULL)::stockcore.hold_order_result;
            CONTINUE;
        END IF;
        o := NULL;
        FOR j IN 1 .. cardinality(found) LOOP
            IF (found[j]).order_id = q.order_id THEN o := found[j]; EXIT; END IF;
        END LOOP;
        IF o.order_id IS NOT NULL THEN
            results[i] := CASE WHEN o.fingerprint = q.fingerprint
                THEN ROW(1, o, NULL)::stockcore.hold_order_result
                ELSE ROW(2, NULL, NULL)::stockcore.hold_order_result END;
            CONTINUE;
        ELSIF r.status <> 1 OR r.expires_at <= v_now THEN
            results[i] := ROW(5, NULL, r)::stockcore.hold_order_result;
            CONTINUE;
        ELSIF (r.skus, r.quantities) IS DISTINCT FROM
              (ARRAY(SELECT l.sku FROM unnest(q.lines) WITH ORDINALITY AS l ORDER BY l.ordinality),
               ARRAY(SELECT l.quantity FROM unnest(q.lines) WITH ORDINALITY AS l ORDER BY l.ordinality)) THEN
            results[i] := ROW(6, NULL, r)::stockcore.hold_order_result;
            CONTINUE;
        END IF;
        o := ROW(q.order_id, q.customer_id, 1, ARRAY[1]::smallint[], 1, q.currency, r.skus,
                 r.quantities,
                 ARRAY(SELECT l.unit_price FROM unnest(q.lines) WITH ORDINALITY AS l ORDER BY l.ordinality),
                 q.total, q.fingerprint, v_now, v_now + q.ttl_ms * interval '1 millisecond',
                 v_now, NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL,
                 NULL)::stockcore.orders;
        r.expires_at := o.payment_deadline;
        r.customer_id := q.customer_id;
        taken := taken || r;
        fresh := fresh || o;
        fresh_by := fresh_by || q.caller;
        fresh_rq := fresh_rq || q.request_id;
        found := found || o;
        results[i] := ROW(0, o, NULL)::stockcore.hold_order_result;
    END LOOP;

    UPDATE stockcore.reservations x SET expires_at = y.expires_at, customer_id = y.customer_id
      FROM unnest(taken) y
     WHERE x.reservation_id = y.reservation_id;
    PERFORM stockcore.record_changes(
        fresh, array_fill(NULL::smallint, ARRAY[cardinality(fresh)]),
        array_fill(1::smallint, ARRAY[cardinality(fresh)]), fresh_by,
        array_fill('created'::text, ARRAY[cardinality(fresh)]), fresh_rq, true);
END $$;

-- ConfirmPayment for a batch, sorted by order id. Codes: 0 paid, 1 repeat (this payment
-- paid it; ord as it is now), 2 unknown order, 3 the amount or currency differs from the
-- order's, 4 the payment id already paid another order (detail names it), 5 the status
-- machine refuses (ord shows the status), 6 the order and its hold disagree (a bug;
-- nothing is written for it), 9 another payment paid it, 10 its hold had lapsed and the
-- order expired now.
--
-- Payment ids are taken under the orders' locks, before anything is decided, in payment
-- id order (the batch comes in order id order, which two batches paying with the same
-- two ids may have crossed): a row for each payment id a request may pay with, holding
-- the first such request's values, inserted in one statement, which waits for a
-- transaction inserting the same id and then conflicts. A request that pays with an id
-- taken here writes its own values over the row; rows no request used are deleted. An id
-- found taken belongs to a committed payment: its requests are answered without waiting.
CREATE OR REPLACE FUNCTION stockcore.pay_orders(
    p_ids text[], p_payment_ids text[], p_amounts bigint[], p_currencies text[],
    p_callers text[], p_request_ids text[], p_reasons text[], p_expiry_caller text,
    OUT results stockcore.order_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE
    v_now     timestamptz := now();
    n         int := coalesce(array_length(p_ids, 1), 0);
    orders    stockcore.orders[];
    holds     stockcore.reservations[];
    k         int;
    o         stockcore.orders;
    r         stockcore.reservations;
    v_move    smallint;
    v_owner   text;
    ch        stockcore.orders[] := '{}';
    ch_from   smallint[] := '{}';
    ch_event  smallint[] := '{}';
    ch_by     text[] := '{}';
    ch_why    text[] := '{}';
    ch_req    text[] := '{}';
    end_ids   text[] := '{}';
    end_st    smallint[] := '{}';
    end_by    text[] := '{}';
    d         record;
    claim_ids text[];
    claim_by  int[];
    taken     text[];
    c         int;
BEGIN
    SELECT x.orders, x.holds INTO orders, holds FROM stockcore.lock_orders(p_ids, true) x;

    -- A request may pay only an order pending when locked, for its total.
    SELECT coalesce(array_agg(f.pid ORDER BY f.pid), '{}'), coalesce(array_agg(f.i ORDER BY f.pid), '{}')
      INTO claim_ids, claim_by
      FROM (SELECT DISTINCT ON (p_payment_ids[i]) p_payment_ids[i] AS pid, i
              FROM generate_subscripts(p_ids, 1) AS i
              JOIN unnest(orders) AS x ON x.order_id = p_ids[i]
             WHERE x.status = 1 AND x.total_minor = p_amounts[i] AND x.currency = p_currencies[i]
             ORDER BY p_payment_ids[i], i) f;
    WITH ins AS (
        INSERT INTO stockcore.payments
               (payment_id, order_id, amount_minor, currency, caller, request_id, created_at)
        SELECT claim_ids[j], p_ids[claim_by[j]], p_amounts[claim_by[j]],
               p_currencies[claim_by[j]], p_callers[claim_by[j]], p_request_ids[claim_by[j]], v_now
          FROM generate_subscripts(claim_ids, 1) AS j
         ORDER BY j
        ON CONFLICT (payment_id) DO NOTHING
        RETURNING payment_id
    )
    SELECT coalesce(array_agg(ins.payment_id), '{}') INTO taken FROM ins;
    -- claim_by[j]: the request whose values the row of claim_ids[j] holds; NULL once the
    -- id is found another's, 0 once a request paid with it.
    FOR j IN 1 .. cardinality(claim_ids) LOOP
        IF NOT claim_ids[j] = ANY (taken) THEN
            claim_by[j] := NULL;
        END IF;
    END LOOP;

    results := array_fill(NULL::stockcore.order_result, ARRAY[n]);
    FOR i IN 1 .. n LOOP
        k := NULL;
        FOR j IN 1 .. cardinality(orders) LOOP
            IF (orders[j]).order_id = p_ids[i] THEN k := j; EXIT; END IF;
        END LOOP;
        IF k IS NULL THEN
            results[i] := ROW(2, NULL, NULL, NULL, NULL, NULL)::stockcore.order_result;
            CONTINUE;
        END IF;
        o := orders[k];
        r := NULL;
        FOR j IN 1 .. cardinality(holds) LOOP
            IF (holds[j]).reservation_id = p_ids[i] THEN r := holds[j]; EXIT; END IF;
        END LOOP;
        IF (p_amounts[i], p_currencies[i]) IS DISTINCT FROM (o.total_minor, o.currency) THEN
            results[i] := ROW(3, o, NULL, NULL, NULL, NULL)::stockcore.order_result;
            CONTINUE;
        END IF;
        v_move := stockcore.order_move(o.path, 2::smallint);
        IF v_move = 0 THEN
            results[i] := ROW(CASE WHEN o.payment_id = p_payment_ids[i] THEN 1 ELSE 9 END, o,
                              NULL, NULL, NULL, NULL)::stockcore.order_result;
            CONTINUE;
        ELSIF v_move IS NULL THEN
            results[i] := ROW(5, o, NULL, NULL, NULL, NULL)::stockcore.order_result;
            CONTINUE;
        END IF;
        IF r.reservation_id IS NULL OR r.status <> 1 THEN
            results[i] := ROW(6, o, coalesce(r.status::text, 'none'), NULL, NULL, NULL)::stockcore.order_result;
            CONTINUE;
        END IF;
        IF r.expires_at <= v_now THEN
            -- The payment came after the deadline: the order expires now, unpaid.
            o.status := 7; o.path := o.path || 7::smallint; o.version := o.version + 1;
            o.updated_at := v_now;
            ch := ch || o; ch_from := ch_from || 1::smallint;
            ch_event := ch_event || stockcore.order_move(ARRAY[1]::smallint[], 7::smallint);
            ch_by := ch_by || p_expiry_caller; ch_why := ch_why || 'payment window closed'::text;
            ch_req := ch_req || p_request_ids[i];
            end_ids := end_ids || r.reservation_id; end_st := end_st || 4::smallint;
            end_by := end_by || p_expiry_caller;
            orders[k] := o;
            r.status := 4;
            results[i] := ROW(10, o, NULL, NULL, NULL, NULL)::stockcore.order_result;
        ELSE
            c := array_position(claim_ids, p_payment_ids[i]);
            IF c IS NULL OR claim_by[c] IS NULL OR claim_by[c] = 0 THEN
                -- Another order's: a committed payment's, or one paid earlier in this batch.
                SELECT pm.order_id INTO v_owner FROM stockcore.payments pm
                 WHERE pm.payment_id = p_payment_ids[i];
                results[i] := ROW(4, o, v_owner, NULL, NULL, NULL)::stockcore.order_result;
                CONTINUE;
            END IF;
            IF claim_by[c] <> i THEN
                UPDATE stockcore.payments pm
                   SET order_id = o.order_id, amount_minor = p_amounts[i],
                       currency = p_currencies[i], caller = p_callers[i],
                       request_id = p_request_ids[i]
                 WHERE pm.payment_id = p_payment_ids[i];
            END IF;
            claim_by[c] := 0;
            o.status := 2; o.path := o.path || 2::smallint; o.version := o.version + 1;
            o.updated_at := v_now; o.payment_id := p_payment_ids[i]; o.paid_minor := p_amounts[i];
            ch := ch || o; ch_from := ch_from || 1::smallint; ch_event := ch_event || v_move;
            ch_by := ch_by || p_callers[i]; ch_why := ch_why || p_reasons[i];
            ch_req := ch_req || p_request_ids[i];
            end_ids := end_ids || r.reservation_id; end_st := end_st || 2::smallint;
            end_by := end_by || p_callers[i];
            orders[k] := o;
            r.status := 2;
            results[i] := ROW(0, o, NULL, NULL, NULL, NULL)::stockcore.order_result;
        END IF;
        FOR j IN 1 .. cardinality(holds) LOOP
            IF (holds[j]).reservation_id = p_ids[i] THEN holds[j] := r; EXIT; END IF;
        END LOOP;
    END LOOP;

    -- Claims no request paid with (refused or expired requests) are given back; most
    -- batches have none, and skip the statement.
    IF 0 < ANY (claim_by) THEN
        DELETE FROM stockcore.payments pm
         WHERE pm.payment_id = ANY (SELECT claim_ids[j] FROM generate_subscripts(claim_ids, 1) AS j
                                     WHERE claim_by[j] > 0);
    END IF;
    SELECT * INTO d FROM stockcore.close_holds(end_ids, end_st, end_by, v_now);
    PERFORM stockcore.record_changes(ch, ch_from, ch_event, ch_by, ch_why, ch_req, false);
    levels := stockcore.apply_stock(d.shards, d.skus, d.on_hand, d.reserved, v_now);
END $$;

-- CancelOrder for a batch, sorted by order id. Unpaid: the hold is released. Paid (not
-- shipped): the units go back on hand by adjustments (one per line, the order's own:
-- order_id and sku, no idempotency key; lines refunded too, as a line refund moves no
-- stock) and what was paid is owed back, but for what lines refunded owe already (nothing
-- when they owe it all). Codes: 0 cancelled,
-- 1 repeat, 2 unknown order, 5 the status machine refuses, 6 the order and its hold
-- disagree, 10 its hold had lapsed and the order expired now.
CREATE OR REPLACE FUNCTION stockcore.cancel_orders(
    p_ids text[], p_reasons text[], p_callers text[], p_request_ids text[],
    p_expiry_caller text,
    OUT results stockcore.order_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE
    v_now     timestamptz := now();
    n         int := coalesce(array_length(p_ids, 1), 0);
    orders    stockcore.orders[];
    holds     stockcore.reservations[];
    k         int;
    o         stockcore.orders;
    r         stockcore.reservations;
    v_move    smallint;
    v_from    smallint;
    ch        stockcore.orders[] := '{}';
    ch_from   smallint[] := '{}';
    ch_event  smallint[] := '{}';
    ch_by     text[] := '{}';
    ch_why    text[] := '{}';
    ch_req    text[] := '{}';
    end_ids   text[] := '{}';
    end_st    smallint[] := '{}';
    end_by    text[] := '{}';
    back_ids  text[] := '{}';
    back_by   text[] := '{}';
    d         record;
    m_shards  smallint[];
    m_skus    text[];
    m_oh      bigint[];
    m_rs      bigint[];
BEGIN
    SELECT x.orders, x.holds INTO orders, holds FROM stockcore.lock_orders(p_ids, true) x;
    results := array_fill(NULL::stockcore.order_result, ARRAY[n]);
    FOR i IN 1 .. n LOOP
        k := NULL;
        FOR j IN 1 .. cardinality(orders) LOOP
            IF (orders[j]).order_id = p_ids[i] THEN k := j; EXIT; END IF;
        END LOOP;
        IF k IS NULL THEN
            results[i] := ROW(2, NULL, NULL, NULL, NULL, NULL)::stockcore.order_result;
            CONTINUE;
        END IF;
        o := orders[k];
        v_move := stockcore.order_move(o.path, 6::smallint);
        IF v_move = 0 THEN
            results[i] := ROW(1, o, NULL, NULL, NULL, NULL)::stockcore.order_result;
            CONTINUE;
        ELSIF v_move IS NULL THEN
            results[i] := ROW(5, o, NULL, NULL, NULL, NULL)::stockcore.order_result;
            CONTINUE;
        END IF;
        v_from := o.status;
        IF o.status = 1 THEN
            r := NULL;
            FOR j IN 1 .. cardinality(holds) LOOP
                IF (holds[j]).reservation_id = p_ids[i] THEN r := holds[j]; EXIT; END IF;
            END LOOP;
            IF r.reservation_id IS NULL OR r.status <> 1 THEN
                results[i] := ROW(6, o, coalesce(r.status::text, 'none'), NULL, NULL, NULL)::stockcore.order_result;
                CONTINUE;
            END IF;
            IF r.expires_at <= v_now THEN
                o.status := 7; o.path := o.path || 7::smallint; o.version := o.version + 1;
                o.updated_at := v_now;
                ch := ch || o; ch_from := ch_from || 1::smallint;
                ch_event := ch_event || stockcore.order_move(ARRAY[1]::smallint[], 7::smallint);
                ch_by := ch_by || p_expiry_caller; ch_why := ch_why || 'payment window closed'::text;
                ch_req := ch_req || p_request_ids[i];
                end_ids := end_ids || r.reservation_id; end_st := end_st || 4::smallint;
                end_by := end_by || p_expiry_caller;
                orders[k] := o;
                results[i] := ROW(10, o, NULL, NULL, NULL, NULL)::stockcore.order_result;
                CONTINUE;
            END IF;
            end_ids := end_ids || r.reservation_id; end_st := end_st || 3::smallint;
            end_by := end_by || p_callers[i];
        ELSE
            -- Paid, not shipped (the status machine allows nothing else here).
            back_ids := back_ids || o.order_id; back_by := back_by || p_callers[i];
            o.refund_owed_minor := o.paid_minor - stockcore.line_refunds_minor(o);
        END IF;
        o.status := 6; o.path := o.path || 6::smallint; o.version := o.version + 1;
        o.updated_at := v_now; o.cancel_reason := p_reasons[i];
        ch := ch || o; ch_from := ch_from || v_from; ch_event := ch_event || v_move;
        ch_by := ch_by || p_callers[i]; ch_why := ch_why || p_reasons[i];
        ch_req := ch_req || p_request_ids[i];
        orders[k] := o;
        results[i] := ROW(0, o, NULL, NULL, NULL, NULL)::stockcore.order_result;
    END LOOP;

    SELECT * INTO d FROM stockcore.close_holds(end_ids, end_st, end_by, v_now);
    PERFORM stockcore.record_changes(ch, ch_from, ch_event, ch_by, ch_why, ch_req, false);

    -- Released holds give back reserved units; paid orders' units go back on hand. Both
    -- in one update per SKU, in lock order, last.
    SELECT coalesce(array_agg(x.sh ORDER BY x.sh, x.sk), '{}'), coalesce(array_agg(x.sk ORDER BY x.sh, x.sk), '{}'),
           coalesce(array_agg(x.oh ORDER BY x.sh, x.sk), '{}'), coalesce(array_agg(x.rs ORDER BY x.sh, x.sk), '{}')
      INTO m_shards, m_skus, m_oh, m_rs
      FROM (SELECT y.sh, y.sk, sum(y.oh) AS oh, sum(y.rs) AS rs
              FROM (SELECT * FROM unnest(d.shards, d.skus, d.on_hand, d.reserved) AS c(sh, sk, oh, rs)
                    UNION ALL
                    SELECT u.sh, u.sk, u.q, 0
                      FROM unnest(back_ids) AS b(id)
                      JOIN stockcore.reservations x ON x.reservation_id = b.id,
                           unnest(x.shards, x.skus, x.quantities) AS u(sh, sk, q)) y
             GROUP BY y.sh, y.sk) x;
    levels := stockcore.apply_stock(m_shards, m_skus, m_oh, m_rs, v_now);

    IF cardinality(back_ids) > 0 THEN
        INSERT INTO stockcore.movements
               (sku, kind, on_hand_delta, reserved_delta, order_id, reason, caller, created_at)
        SELECT u.sk, 'adjust', u.q, 0, b.id, 'order ' || b.id || ' cancelled after payment',
               b.caller, v_now
          FROM unnest(back_ids, back_by) AS b(id, caller)
          JOIN stockcore.reservations x ON x.reservation_id = b.id,
               unnest(x.skus, x.quantities) AS u(sk, q);
        -- The order's own rows (order_id, sku), apart from every caller's idempotency key
        -- (014_adjustments_by_origin.sql): nothing a caller sent can be in their way.
        INSERT INTO stockcore.adjustments
               (order_id, fingerprint, sku, applied_delta, on_hand_after, reserved_after,
                caller, created_at)
        SELECT b.id,
               substr(sha256(convert_to(format('adjust|%s|%s|None|order %s cancelled after payment',
                                               u.sk, u.q, b.id), 'UTF8')), 1, 16),
               u.sk, u.q, l.on_hand, l.reserved, b.caller, v_now
          FROM unnest(back_ids, back_by) AS b(id, caller)
          JOIN stockcore.reservations x ON x.reservation_id = b.id,
               unnest(x.skus, x.quantities) AS u(sk, q)
          JOIN unnest(levels) AS l ON l.sku = u.sk;
    END IF;
END $$;

-- CancelOrder with a customer's token (a shopper's, minted by a checkout gateway): only
-- that customer's order, and only while it is unpaid. Both are decided under the order's
-- lock, in the statement that cancels, so a payment committing meanwhile is never undone
-- by a shopper. p_customers[i] is the customer request i is bound to, or NULL for a
-- service's request (decided by cancel_orders alone). Codes beyond cancel_orders': 7 not
-- this customer's order, or no such order (a shopper learns nothing of other customers'
-- orders); 8 the customer's order, but paid or further along (ord shows it).
CREATE OR REPLACE FUNCTION stockcore.cancel_orders_as(
    p_ids text[], p_reasons text[], p_callers text[], p_request_ids text[],
    p_customers text[], p_expiry_caller text,
    OUT results stockcore.order_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
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

-- ShipOrder (p_target 3), RecordInTransit (4) and RecordDelivery (5) for a batch, sorted
-- by order id. For 3, p_carriers/p_tracking/p_acks name the parcel; for 4 and 5,
-- p_times are the carrier's times. Codes: 0 moved, 1 repeat, 2 unknown order, 5 the
-- status machine refuses, 11 it shipped already, as another parcel, 12 the carrier's time
-- is before the order was created (decided first: a repeat with such a time is refused).
CREATE OR REPLACE FUNCTION stockcore.advance_orders(
    p_target smallint, p_ids text[], p_carriers text[], p_tracking text[], p_acks text[],
    p_times timestamptz[], p_callers text[], p_request_ids text[], p_reasons text[],
    OUT results stockcore.order_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE
    v_now     timestamptz := now();
    n         int := coalesce(array_length(p_ids, 1), 0);
    orders    stockcore.orders[];
    k         int;
    o         stockcore.orders;
    v_move    smallint;
    v_from    smallint;
    ch        stockcore.orders[] := '{}';
    ch_from   smallint[] := '{}';
    ch_event  smallint[] := '{}';
    ch_by     text[] := '{}';
    ch_why    text[] := '{}';
    ch_req    text[] := '{}';
BEGIN
    SELECT x.orders INTO orders FROM stockcore.lock_orders(p_ids, false) x;
    levels := '{}';
    results := array_fill(NULL::stockcore.order_result, ARRAY[n]);
    FOR i IN 1 .. n LOOP
        k := NULL;
        FOR j IN 1 .. cardinality(orders) LOOP
            IF (orders[j]).order_id = p_ids[i] THEN k := j; EXIT; END IF;
        END LOOP;
        IF k IS NULL THEN
            results[i] := ROW(2, NULL, NULL, NULL, NULL, NULL)::stockcore.order_result;
            CONTINUE;
        END IF;
        o := orders[k];
        IF p_target IN (4, 5) AND p_times[i] < o.created_at THEN
            results[i] := ROW(12, o, NULL, NULL, NULL, NULL)::stockcore.order_result;
            CONTINUE;
        END IF;
        v_move := stockcore.order_move(o.path, p_target);
        IF v_move = 0 THEN
            IF p_target = 3 AND (o.carrier, o.tracking_no) IS DISTINCT FROM (p_carriers[i], p_tracking[i]) THEN
                results[i] := ROW(11, o, NULL, NULL, NULL, NULL)::stockcore.order_result;
            ELSE
                results[i] := ROW(1, o, NULL, NULL, NULL, NULL)::stockcore.order_result;
            END IF;
            CONTINUE;
        ELSIF v_move IS NULL THEN
            results[i] := ROW(5, o, NULL, NULL, NULL, NULL)::stockcore.order_result;
            CONTINUE;
        END IF;
        v_from := o.status;
        o.status := p_target; o.path := o.path || p_target; o.version := o.version + 1;
        o.updated_at := v_now; o.last_sync_at := v_now;
        IF p_target = 3 THEN
            o.carrier := p_carriers[i]; o.tracking_no := p_tracking[i];
            o.carrier_ack_id := p_acks[i]; o.shipped_at := v_now;
        ELSIF p_target = 4 THEN
            o.in_transit_at := p_times[i];
        ELSE
            o.delivered_at := p_times[i];
        END IF;
        ch := ch || o; ch_from := ch_from || v_from; ch_event := ch_event || v_move;
        ch_by := ch_by || p_callers[i]; ch_why := ch_why || p_reasons[i];
        ch_req := ch_req || p_request_ids[i];
        orders[k] := o;
        results[i] := ROW(0, o, NULL, NULL, NULL, NULL)::stockcore.order_result;
    END LOOP;
    PERFORM stockcore.record_changes(ch, ch_from, ch_event, ch_by, ch_why, ch_req, false);
END $$;

-- The expiry sweep: expire up to p_limit HELD holds past their expiry (the database
-- clock decides), and the unpaid orders they belong to, in one transaction. Rows another
-- transaction has locked are skipped (it is deciding them; the next sweep looks again),
-- so sweeps in several processes share the work without waiting on each other.
CREATE OR REPLACE FUNCTION stockcore.expire_due(
    p_limit int, p_caller text, p_request_id text,
    OUT due int, OUT holds_expired int, OUT orders_expired int, OUT lag_seconds float8[],
    OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE
    v_now    timestamptz := now();
    cand     text[];
    owned    text[];
    mine     stockcore.orders[];
    mine_ids text[];
    held     stockcore.reservations[];
    ch       stockcore.orders[] := '{}';
    o        stockcore.orders;
    v_event  smallint := stockcore.order_move(ARRAY[1]::smallint[], 7::smallint);
    d        record;
BEGIN
    SELECT coalesce(array_agg(x.reservation_id), '{}') INTO cand
      FROM (SELECT x.reservation_id FROM stockcore.reservations x
             WHERE x.status = 1 AND x.expires_at <= v_now
             ORDER BY x.expires_at LIMIT p_limit) x;
    due := cardinality(cand);
    holds_expired := 0;
    orders_expired := 0;
    lag_seconds := '{}';
    levels := '{}';
    IF due = 0 THEN
        RETURN;
    END IF;
    SELECT coalesce(array_agg(x.order_id), '{}') INTO owned
      FROM stockcore.orders x WHERE x.order_id = ANY (cand);
    SELECT coalesce(array_agg(x::stockcore.orders ORDER BY x.order_id), '{}') INTO mine
      FROM (SELECT * FROM stockcore.orders x WHERE x.order_id = ANY (owned)
             ORDER BY x.order_id FOR UPDATE SKIP LOCKED) x;
    SELECT coalesce(array_agg(x.order_id), '{}') INTO mine_ids FROM unnest(mine) x;
    -- Holds of orders another transaction has locked are left to it.
    SELECT coalesce(array_agg(x::stockcore.reservations ORDER BY x.reservation_id), '{}') INTO held
      FROM (SELECT * FROM stockcore.reservations x
             WHERE x.reservation_id = ANY (cand) AND x.status = 1 AND x.expires_at <= v_now
               AND (x.reservation_id = ANY (mine_ids) OR NOT x.reservation_id = ANY (owned))
             ORDER BY x.reservation_id FOR UPDATE SKIP LOCKED) x;
    -- A reservation an order took after `owned` was read (order_holds, which held its lock
    -- until it committed) is that order's hold now: the next sweep expires it with its
    -- order.
    IF cardinality(held) > 0 THEN
        SELECT coalesce(array_agg(x::stockcore.reservations ORDER BY x.reservation_id), '{}') INTO held
          FROM unnest(held) x
         WHERE x.reservation_id = ANY (mine_ids)
            OR NOT EXISTS (SELECT 1 FROM stockcore.orders y WHERE y.order_id = x.reservation_id);
    END IF;
    holds_expired := cardinality(held);
    SELECT coalesce(array_agg(extract(epoch FROM v_now - x.expires_at)::float8), '{}')
      INTO lag_seconds FROM unnest(held) x;
    SELECT * INTO d FROM stockcore.close_holds(
        (SELECT coalesce(array_agg(x.reservation_id ORDER BY x.reservation_id), '{}') FROM unnest(held) x),
        array_fill(4::smallint, ARRAY[holds_expired]),
        array_fill(p_caller, ARRAY[holds_expired]), v_now);

    FOREACH o IN ARRAY mine LOOP
        CONTINUE WHEN o.status <> 1
                  OR NOT EXISTS (SELECT 1 FROM unnest(held) x WHERE x.reservation_id = o.order_id);
        o.status := 7; o.path := o.path || 7::smallint; o.version := o.version + 1;
        o.updated_at := v_now;
        ch := ch || o;
    END LOOP;
    orders_expired := cardinality(ch);
    PERFORM stockcore.record_changes(
        ch, array_fill(1::smallint, ARRAY[orders_expired]),
        array_fill(v_event, ARRAY[orders_expired]), array_fill(p_caller, ARRAY[orders_expired]),
        array_fill('payment window closed'::text, ARRAY[orders_expired]),
        array_fill(p_request_id, ARRAY[orders_expired]), false);
    levels := stockcore.apply_stock(d.shards, d.skus, d.on_hand, d.reserved, v_now);
END $$;

-- What the functions above share.

-- Lock the named orders (ids sorted; repeats allowed), then their holds; returns both,
-- distinct, in id order.
CREATE OR REPLACE FUNCTION stockcore.lock_orders(
    p_ids text[], p_with_holds boolean,
    OUT orders stockcore.orders[], OUT holds stockcore.reservations[]
)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT coalesce(array_agg(x::stockcore.orders ORDER BY x.order_id), '{}') INTO orders
      FROM (SELECT * FROM stockcore.orders x
             WHERE x.order_id = ANY (p_ids) ORDER BY x.order_id FOR UPDATE) x;
    holds := '{}';
    IF p_with_holds THEN
        SELECT coalesce(array_agg(x::stockcore.reservations ORDER BY x.reservation_id), '{}') INTO holds
          FROM (SELECT * FROM stockcore.reservations x
                 WHERE x.reservation_id = ANY (p_ids) ORDER BY x.reservation_id FOR UPDATE) x;
    END IF;
END $$;

-- What the lines refunded of an order owe back (RefundLine): each line's refunded units at
-- its unit price.
CREATE OR REPLACE FUNCTION stockcore.line_refunds_minor(o stockcore.orders) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(sum(u.q * u.p), 0)::bigint
      FROM unnest(o.refunded_quantities, o.unit_prices) AS u(q, p)
$$;

-- The event of moving an order along p_path to p_wanted: 0 when the move was made
-- already (a repeat), NULL when the status machine does not allow it.
CREATE OR REPLACE FUNCTION stockcore.order_move(p_path smallint[], p_wanted smallint) RETURNS smallint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_wanted = ANY (p_path) THEN 0::smallint
                ELSE (SELECT t.event_type FROM stockcore.order_transitions t
                       WHERE t.from_status = p_path[cardinality(p_path)] AND t.to_status = p_wanted)
           END
$$;

-- Write order changes already decided under the caller's locks: the order rows (each
-- from the version it was read at), their history rows and their events. p_orders are
-- the orders after the change (p_new: just created).
CREATE OR REPLACE FUNCTION stockcore.record_changes(
    p_orders stockcore.orders[], p_from smallint[], p_events smallint[], p_callers text[],
    p_reasons text[], p_request_ids text[], p_new boolean
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    n       int := coalesce(array_length(p_orders, 1), 0);
    v_count int;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    IF p_new THEN
        WITH ins AS (
            INSERT INTO stockcore.orders SELECT (p_orders[i]).* FROM generate_subscripts(p_orders, 1) AS i
            RETURNING 1
        )
        SELECT count(*) INTO v_count FROM ins;
    ELSE
        UPDATE stockcore.orders o
           SET status = (p_orders[i]).status, path = (p_orders[i]).path,
               version = (p_orders[i]).version, updated_at = (p_orders[i]).updated_at,
               payment_id = (p_orders[i]).payment_id, paid_minor = (p_orders[i]).paid_minor,
               carrier = (p_orders[i]).carrier, tracking_no = (p_orders[i]).tracking_no,
               carrier_ack_id = (p_orders[i]).carrier_ack_id,
               shipped_at = (p_orders[i]).shipped_at, in_transit_at = (p_orders[i]).in_transit_at,
               delivered_at = (p_orders[i]).delivered_at, last_sync_at = (p_orders[i]).last_sync_at,
               refund_owed_minor = (p_orders[i]).refund_owed_minor,
               cancel_reason = (p_orders[i]).cancel_reason
          FROM generate_subscripts(p_orders, 1) AS i
         WHERE o.order_id = (p_orders[i]).order_id AND o.version = (p_orders[i]).version - 1;
        GET DIAGNOSTICS v_count = ROW_COUNT;
    END IF;
    IF v_count <> n THEN
        RAISE EXCEPTION 'order changes found another version' USING ERRCODE = 'data_corrupted';
    END IF;

    -- The money the changes moved, in the ledger (017_ledger.sql), in this transaction: a
    -- payment (PENDING_PAYMENT to PAID) posts ORDER_PAID, a paid order cancelled posts
    -- REFUND_OWED (its refund_owed_minor: what lines refunded owe is posted apart, by
    -- refund_lines); each once per order (a second would conflict and fail the batch). An
    -- order of nothing to pay or owe back (a free one, one whose lines were all refunded)
    -- moves no money and posts nothing.
    IF NOT p_new THEN
        INSERT INTO stockcore.ledger_transfers
               (kind, source_id, order_id, debit_account, credit_account, amount_minor,
                currency, posted_at)
        SELECT CASE WHEN (o).status = 2 THEN 1 ELSE 2 END, (o).order_id, (o).order_id,
               CASE WHEN (o).status = 2 THEN 1 ELSE 3 END,
               CASE WHEN (o).status = 2 THEN 2 ELSE 4 END,
               CASE WHEN (o).status = 2 THEN (o).paid_minor ELSE (o).refund_owed_minor END,
               (o).currency, (o).updated_at
          FROM (SELECT p_orders[i] AS o, p_from[i] AS from_status
                  FROM generate_subscripts(p_orders, 1) AS i) x
         WHERE (x.from_status = 1 AND (o).status = 2 AND (o).paid_minor > 0)
            OR (x.from_status = 2 AND (o).status = 6 AND (o).refund_owed_minor > 0);
        -- ... and a refund owed is a refund to make (live/refunds.sql), in this transaction.
        PERFORM stockcore.owe_order_refunds(p_orders, p_from);
    END IF;

    WITH h AS (
        INSERT INTO stockcore.order_history
               (order_id, version, from_status, to_status, changed_at, caller, reason, request_id)
        SELECT (p_orders[i]).order_id, (p_orders[i]).version, p_from[i], (p_orders[i]).status,
               (p_orders[i]).updated_at, p_callers[i], p_reasons[i], p_request_ids[i]
          FROM generate_subscripts(p_orders, 1) AS i
        RETURNING *
    )
    INSERT INTO stockcore.order_events
           (event_id, order_id, order_version, type, customer_id, body, created_at)
    SELECT (p_orders[i]).order_id || '/' || (p_orders[i]).version, (p_orders[i]).order_id,
           (p_orders[i]).version, p_events[i], (p_orders[i]).customer_id,
           stockcore.event_body(p_orders[i], h), (p_orders[i]).updated_at
      FROM generate_subscripts(p_orders, 1) AS i
      JOIN h ON h.order_id = (p_orders[i]).order_id AND h.version = (p_orders[i]).version;

    PERFORM pg_notify('stockcore_order_events', '');
END $$;

-- The outbox body of an order event: the order after the change and the change, as
-- jsonb. Nulls, the fingerprint and the change's repeat of the order id and version are
-- left out (readers fill them in: server/storage/orders_pg.py); rows written before
-- bodies were this compact keep their full ones, which read the same.
CREATE OR REPLACE FUNCTION stockcore.event_body(o stockcore.orders, h stockcore.order_history)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'order', jsonb_strip_nulls(to_jsonb(o) - 'fingerprint'),
        'change', jsonb_strip_nulls(to_jsonb(h) - 'order_id' - 'version'))
$$;
