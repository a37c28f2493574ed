-- Hot stock rows are locked last, for as short a time as possible. A batch's stock row
-- is the one lock every concurrent batch of a hot SKU queues for; a transaction holds it
-- until it commits, so everything a batch writes elsewhere (reservation rows, orders,
-- history, events, the ledger) is written first and the stock rows are updated last, each
-- by one conditional UPDATE that takes the lock.
--
-- Holds decide against levels read without a lock (the Redis gate already admitted them)
-- and take the units with `UPDATE ... WHERE on_hand - reserved >= take`. If a level fell
-- meanwhile so that a take no longer fits, the batch is decided again inside the same
-- statement, this time with the rows locked first (the subtransaction of the exception
-- block is rolled back); oversell stays impossible either way, and the rare second pass
-- costs one more round of statements, not a round trip.
--
-- The statements that read or write one stock row use generic plans: they name one
-- shard, so a plan made once prunes to one partition when it runs, instead of being
-- planned again for every batch.

-- Stock rows, distinct and in lock order, with their levels (NULL for unknown SKUs);
-- with p_lock, each row is locked as it is read.
CREATE FUNCTION stockcore.read_stock(
    p_shards smallint[], p_skus text[], p_lock boolean,
    OUT shards smallint[], OUT skus text[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    lvl stockcore.stock_level;
BEGIN
    SELECT coalesce(array_agg(d.sh ORDER BY d.sh, d.sk), '{}'),
           coalesce(array_agg(d.sk ORDER BY d.sh, d.sk), '{}')
      INTO shards, skus
      FROM (SELECT DISTINCT u.sh, u.sk FROM unnest(p_shards, p_skus) AS u(sh, sk)) d;
    levels := '{}';
    FOR k IN 1 .. cardinality(skus) LOOP
        lvl := NULL;
        IF p_lock THEN
            SELECT st.sku, st.on_hand, st.reserved, st.version INTO lvl
              FROM stockcore.stock st WHERE st.shard = shards[k] AND st.sku = skus[k] FOR UPDATE;
        ELSE
            SELECT st.sku, st.on_hand, st.reserved, st.version INTO lvl
              FROM stockcore.stock st WHERE st.shard = shards[k] AND st.sku = skus[k];
        END IF;
        levels := levels || lvl;
    END LOOP;
END $$;

-- Take units for holds (p_takes per SKU, in lock order), each only if it still fits;
-- SKUs with nothing to take report the level they were read at (p_read). Raises
-- serialization_failure when a take no longer fits: the caller decides again.
CREATE FUNCTION stockcore.take_stock(
    p_shards smallint[], p_skus text[], p_takes bigint[], p_read stockcore.stock_level[],
    p_now timestamptz
) RETURNS stockcore.stock_level[]
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    lvl    stockcore.stock_level;
    levels stockcore.stock_level[] := '{}';
BEGIN
    FOR k IN 1 .. cardinality(p_skus) LOOP
        IF p_read[k] IS NULL THEN
            CONTINUE;  -- unknown SKU
        ELSIF p_takes[k] = 0 THEN
            levels := levels || p_read[k];
            CONTINUE;
        END IF;
        UPDATE stockcore.stock st
           SET reserved = st.reserved + p_takes[k], version = st.version + 1, updated_at = p_now
         WHERE st.shard = p_shards[k] AND st.sku = p_skus[k]
           AND st.on_hand - st.reserved >= p_takes[k]
        RETURNING st.sku, st.on_hand, st.reserved, st.version INTO lvl;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'stock % fell below the batch read without a lock', p_skus[k]
                USING ERRCODE = 'serialization_failure';
        END IF;
        levels := levels || lvl;
    END LOOP;
    RETURN levels;
END $$;

ALTER FUNCTION stockcore.apply_stock(smallint[], text[], bigint[], bigint[], timestamptz)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION stockcore.stock_levels(smallint[], text[])
    SET plan_cache_mode = force_generic_plan;

-- Decide a batch of holds (sorted by id, repeats adjacent) against levels read with or
-- without locks, insert the held reservations and their ledger rows; return what each
-- SKU must give (in lock order) for stockcore.take_stock, which the caller runs last.
CREATE FUNCTION stockcore.hold_step(
    p_ids text[], p_fingerprints bytea[], p_ttl_ms bigint[], p_callers text[],
    p_first int[], p_count int[], p_shards smallint[], p_skus text[], p_qtys bigint[],
    p_lock boolean,
    OUT results stockcore.hold_result[], OUT shards smallint[], OUT skus text[],
    OUT takes bigint[], OUT read stockcore.stock_level[]
)
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := now();
    n          int := coalesce(array_length(p_ids, 1), 0);
    u_left     bigint[];
    existing   stockcore.reservations[];
    e          int;
    admitted   int[];
    inserted   stockcore.reservations[];
    r          stockcore.reservations;
    res        stockcore.hold_result;
    k          int;
    fits       boolean;
    s_skus     text[];
    s_avail    bigint[];
    unknown    text[];
    prev_held  boolean;
BEGIN
    SELECT x.shards, x.skus, x.levels INTO shards, skus, read
      FROM stockcore.read_stock(p_shards, p_skus, p_lock) x;
    u_left := array_fill(0::bigint, ARRAY[cardinality(skus)]);
    takes := u_left;

    -- Decide every request, then insert the admitted ones in one statement. A concurrent
    -- transaction may have created one of these ids meanwhile (the insert waited for it):
    -- then the rows just inserted are taken back and the batch decided again, that id now
    -- answered by its fingerprint, so its units stay available to the rest of the batch.
    LOOP
        SELECT coalesce(array_agg(x ORDER BY x.reservation_id), '{}') INTO existing
          FROM stockcore.reservations x WHERE x.reservation_id = ANY (p_ids);
        FOR k IN 1 .. cardinality(skus) LOOP
            u_left[k] := (read[k]).on_hand - (read[k]).reserved;
        END LOOP;
        results := array_fill(NULL::stockcore.hold_result, ARRAY[n]);
        admitted := '{}';
        prev_held := false;
        e := 1;
        FOR i IN 1 .. n LOOP
            -- A second request with the id of one held earlier in this batch: a repeat.
            IF i > 1 AND p_ids[i] = p_ids[i - 1] AND prev_held THEN
                results[i] := ROW(CASE WHEN p_fingerprints[i] = p_fingerprints[i - 1] THEN 1 ELSE 2 END,
                                  NULL, NULL, NULL, NULL)::stockcore.hold_result;
                CONTINUE;
            END IF;
            prev_held := false;
            WHILE e <= cardinality(existing) AND (existing[e]).reservation_id < p_ids[i] LOOP
                e := e + 1;
            END LOOP;
            IF e <= cardinality(existing) AND (existing[e]).reservation_id = p_ids[i] THEN
                r := existing[e];
                results[i] := ROW(CASE WHEN r.fingerprint = p_fingerprints[i] THEN 1 ELSE 2 END,
                                  r, NULL, NULL, NULL)::stockcore.hold_result;
                CONTINUE;
            END IF;
            fits := true;
            s_skus := '{}'; s_avail := '{}'; unknown := '{}';
            FOR j IN p_first[i] .. p_first[i] + p_count[i] - 1 LOOP
                k := array_position(skus, p_skus[j]);
                IF read[k] IS NULL THEN
                    fits := false;
                    unknown := unknown || p_skus[j];
                ELSIF u_left[k] < p_qtys[j] THEN
                    fits := false;
                    s_skus := s_skus || p_skus[j];
                    s_avail := s_avail || greatest(u_left[k], 0);
                END IF;
            END LOOP;
            IF NOT fits THEN
                results[i] := ROW(3, NULL, s_skus, s_avail, unknown)::stockcore.hold_result;
                CONTINUE;
            END IF;
            FOR j IN p_first[i] .. p_first[i] + p_count[i] - 1 LOOP
                k := array_position(skus, p_skus[j]);
                u_left[k] := u_left[k] - p_qtys[j];
            END LOOP;
            admitted := admitted || i;
            prev_held := true;
        END LOOP;

        WITH ins AS (
            INSERT INTO stockcore.reservations
                   (reservation_id, status, shards, skus, quantities, fingerprint, caller,
                    created_at, expires_at)
            SELECT p_ids[a.i], 1, p_shards[p_first[a.i] : p_first[a.i] + p_count[a.i] - 1],
                   p_skus[p_first[a.i] : p_first[a.i] + p_count[a.i] - 1],
                   p_qtys[p_first[a.i] : p_first[a.i] + p_count[a.i] - 1], p_fingerprints[a.i],
                   p_callers[a.i], v_now, v_now + p_ttl_ms[a.i] * interval '1 millisecond'
              FROM unnest(admitted) AS a(i)
            ON CONFLICT (reservation_id) DO NOTHING
            RETURNING *
        )
        SELECT coalesce(array_agg(ins::stockcore.reservations ORDER BY ins.reservation_id), '{}')
          INTO inserted FROM ins;
        EXIT WHEN cardinality(inserted) = cardinality(admitted);
        DELETE FROM stockcore.reservations x
         WHERE x.reservation_id = ANY (SELECT y.reservation_id FROM unnest(inserted) y);
    END LOOP;

    e := 1;
    FOREACH k IN ARRAY admitted LOOP
        WHILE (inserted[e]).reservation_id < p_ids[k] LOOP
            e := e + 1;
        END LOOP;
        results[k] := ROW(0, inserted[e], NULL, NULL, NULL)::stockcore.hold_result;
        FOR j IN p_first[k] .. p_first[k] + p_count[k] - 1 LOOP
            takes[array_position(skus, p_skus[j])] := takes[array_position(skus, p_skus[j])] + p_qtys[j];
        END LOOP;
    END LOOP;
    -- Repeats within the batch answer with the row held earlier in it.
    FOR i IN 2 .. n LOOP
        res := results[i];
        IF res.reservation IS NULL AND res.code IN (1, 2) THEN
            res.reservation := (results[i - 1]).reservation;
            results[i] := res;
        END IF;
    END LOOP;

    INSERT INTO stockcore.movements
           (sku, kind, on_hand_delta, reserved_delta, reservation_id, caller, created_at)
    SELECT p_skus[j], 'reserve', 0, p_qtys[j], p_ids[a.i], p_callers[a.i], v_now
      FROM unnest(admitted) AS a(i),
           generate_series(p_first[a.i] , p_first[a.i] + p_count[a.i] - 1) AS j;
END $$;

CREATE OR REPLACE FUNCTION stockcore.hold_stock(
    p_ids text[], p_fingerprints bytea[], p_ttl_ms bigint[], p_callers text[],
    p_first int[], p_count int[], p_shards smallint[], p_skus text[], p_qtys bigint[],
    OUT results stockcore.hold_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql AS $$
DECLARE
    h record;
BEGIN
    BEGIN
        SELECT * INTO h FROM stockcore.hold_step(p_ids, p_fingerprints, p_ttl_ms, p_callers,
            p_first, p_count, p_shards, p_skus, p_qtys, false);
        levels := stockcore.take_stock(h.shards, h.skus, h.takes, h.read, now());
    EXCEPTION WHEN serialization_failure THEN
        SELECT * INTO h FROM stockcore.hold_step(p_ids, p_fingerprints, p_ttl_ms, p_callers,
            p_first, p_count, p_shards, p_skus, p_qtys, true);
        levels := stockcore.take_stock(h.shards, h.skus, h.takes, h.read, now());
    END;
    results := h.results;
END $$;

-- End HELD holds already locked by the caller (ids sorted, with the status each reaches
-- and who ends it): the reservation rows and the ledger. Returns what each SKU gives back
-- (in lock order) for stockcore.apply_stock, which the caller runs last.
CREATE FUNCTION stockcore.close_holds(
    p_ids text[], p_status smallint[], p_callers text[], p_now timestamptz,
    OUT shards smallint[], OUT skus text[], OUT on_hand bigint[], OUT reserved bigint[]
)
LANGUAGE plpgsql AS $$
BEGIN
    shards := '{}'; skus := '{}'; on_hand := '{}'; reserved := '{}';
    IF coalesce(array_length(p_ids, 1), 0) = 0 THEN
        RETURN;
    END IF;
    UPDATE stockcore.reservations rr SET status = c.st, finished_at = p_now
      FROM unnest(p_ids, p_status) AS c(id, st)
     WHERE rr.reservation_id = c.id;

    INSERT INTO stockcore.movements
           (sku, kind, on_hand_delta, reserved_delta, reservation_id, caller, created_at)
    SELECT u.sk, CASE c.st WHEN 2 THEN 'commit' WHEN 3 THEN 'release' ELSE 'expire' END,
           CASE WHEN c.st = 2 THEN -u.q ELSE 0 END, -u.q, c.id, c.caller, p_now
      FROM unnest(p_ids, p_status, p_callers) AS c(id, st, caller)
      JOIN stockcore.reservations rr ON rr.reservation_id = c.id,
           unnest(rr.skus, rr.quantities) AS u(sk, q);

    SELECT array_agg(d.sh ORDER BY d.sh, d.sk), array_agg(d.sk ORDER BY d.sh, d.sk),
           array_agg(d.oh ORDER BY d.sh, d.sk), array_agg(d.rs ORDER BY d.sh, d.sk)
      INTO shards, skus, on_hand, reserved
      FROM (SELECT u.sh, u.sk, -sum(CASE WHEN c.st = 2 THEN u.q ELSE 0 END) AS oh, -sum(u.q) AS rs
              FROM unnest(p_ids, p_status) AS c(id, st)
              JOIN stockcore.reservations rr ON rr.reservation_id = c.id,
                   unnest(rr.shards, rr.skus, rr.quantities) AS u(sh, sk, q)
             GROUP BY u.sh, u.sk) d;
END $$;

CREATE OR REPLACE FUNCTION stockcore.finish_holds(
    p_ids text[], p_target smallint, p_callers text[],
    OUT results stockcore.finish_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := now();
    n        int := coalesce(array_length(p_ids, 1), 0);
    held     stockcore.reservations[];
    owned    text[];
    r        stockcore.reservations;
    e        int := 1;
    v_status smallint;
    done_ids text[] := '{}';
    done_st  smallint[] := '{}';
    done_by  text[] := '{}';
    d        record;
BEGIN
    SELECT coalesce(array_agg(x::stockcore.reservations ORDER BY x.reservation_id), '{}') INTO held
      FROM (SELECT * FROM stockcore.reservations x
             WHERE x.reservation_id = ANY (p_ids) ORDER BY x.reservation_id FOR UPDATE) x;
    SELECT coalesce(array_agg(o.order_id), '{}') INTO owned
      FROM stockcore.orders o WHERE o.order_id = ANY (p_ids);

    results := array_fill(NULL::stockcore.finish_result, ARRAY[n]);
    FOR i IN 1 .. n LOOP
        WHILE e <= cardinality(held) AND (held[e]).reservation_id < p_ids[i] LOOP
            e := e + 1;
        END LOOP;
        IF e > cardinality(held) OR (held[e]).reservation_id <> p_ids[i] THEN
            results[i] := ROW(4, NULL)::stockcore.finish_result;
            CONTINUE;
        END IF;
        r := held[e];
        IF p_ids[i] = ANY (owned) THEN
            results[i] := ROW(2, r)::stockcore.finish_result;
        ELSIF r.status <> 1 THEN
            results[i] := ROW(1, r)::stockcore.finish_result;
        ELSE
            v_status := CASE WHEN r.expires_at <= v_now THEN 4 ELSE p_target END;
            r.status := v_status;
            r.finished_at := v_now;
            held[e] := r;
            done_ids := done_ids || r.reservation_id;
            done_st := done_st || v_status;
            done_by := done_by || p_callers[i];
            results[i] := ROW(0, r)::stockcore.finish_result;
        END IF;
    END LOOP;

    SELECT * INTO d FROM stockcore.close_holds(done_ids, done_st, done_by, v_now);
    levels := stockcore.apply_stock(d.shards, d.skus, d.on_hand, d.reserved, v_now);
END $$;

-- create_orders' work, deciding against levels read with or without locks (hold_step).
CREATE FUNCTION stockcore.create_step(
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
        p_first, p_count, p_shards, p_skus, p_qtys, p_lock);
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
                     NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL)::stockcore.orders;
            fresh := fresh || o;
            fresh_i := fresh_i || i;
        ELSIF h.code = 1 THEN
            repeats := repeats || p_ids[i];
        ELSIF h.code = 2 THEN
            results[i] := ROW(2, NULL, NULL, NULL, NULL, NULL)::stockcore.order_result;
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

    -- A repeated hold: the same order again (answer with it as it is now), or the id of
    -- a different order or of a plain reservation.
    IF cardinality(repeats) > 0 THEN
        SELECT coalesce(array_agg(x ORDER BY x.order_id), '{}') INTO found
          FROM stockcore.orders x WHERE x.order_id = ANY (repeats);
        FOR i IN 1 .. n LOOP
            CONTINUE WHEN (st.results[i]).code <> 1;
            results[i] := ROW(2, NULL, NULL, NULL, NULL, NULL)::stockcore.order_result;
            FOR e IN 1 .. cardinality(found) LOOP
                IF (found[e]).order_id = p_ids[i] AND (found[e]).fingerprint = p_order_fingerprints[i] THEN
                    results[i] := ROW(1, found[e], NULL, NULL, NULL, NULL)::stockcore.order_result;
                END IF;
            END LOOP;
        END LOOP;
    END IF;

    levels := stockcore.take_stock(st.shards, st.skus, st.takes, st.read, now());
END $$;

CREATE OR REPLACE FUNCTION stockcore.create_orders(
    p_ids text[], p_fingerprints bytea[], p_ttl_ms bigint[], p_callers text[],
    p_first int[], p_count int[], p_shards smallint[], p_skus text[], p_qtys bigint[],
    p_prices bigint[], p_customers text[], p_currencies text[], p_totals bigint[],
    p_order_fingerprints bytea[], p_request_ids text[],
    OUT results stockcore.order_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql AS $$
DECLARE
    c record;
BEGIN
    BEGIN
        SELECT * INTO c FROM stockcore.create_step(p_ids, p_fingerprints, p_ttl_ms, p_callers,
            p_first, p_count, p_shards, p_skus, p_qtys, p_prices, p_customers, p_currencies,
            p_totals, p_order_fingerprints, p_request_ids, false);
    EXCEPTION WHEN serialization_failure THEN
        SELECT * INTO c FROM stockcore.create_step(p_ids, p_fingerprints, p_ttl_ms, p_callers,
            p_first, p_count, p_shards, p_skus, p_qtys, p_prices, p_customers, p_currencies,
            p_totals, p_order_fingerprints, p_request_ids, true);
    END;
    results := c.results;
    levels := c.levels;
END $$;

CREATE OR REPLACE FUNCTION stockcore.pay_orders(
    p_ids text[], p_payment_ids text[], p_amounts bigint[], p_currencies text[],
    p_callers text[], p_request_ids text[], p_reasons text[], p_expiry_caller text,
    OUT results stockcore.order_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql AS $$
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
            results[i] := ROW(CASE WHEN o.payment_id = p_payment_ids[i] THEN 1 ELSE 5 END, o,
                              CASE WHEN o.payment_id = p_payment_ids[i] THEN NULL ELSE 'other-payment' END,
                              NULL, NULL, NULL)::stockcore.order_result;
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
            results[i] := ROW(5, o, 'lapsed', NULL, NULL, NULL)::stockcore.order_result;
        ELSE
            INSERT INTO stockcore.payments
                   (payment_id, order_id, amount_minor, currency, caller, request_id, created_at)
            VALUES (p_payment_ids[i], o.order_id, p_amounts[i], p_currencies[i], p_callers[i],
                    p_request_ids[i], v_now)
            ON CONFLICT (payment_id) DO NOTHING;
            IF NOT FOUND THEN
                SELECT pm.order_id INTO v_owner FROM stockcore.payments pm
                 WHERE pm.payment_id = p_payment_ids[i];
                results[i] := ROW(4, o, v_owner, NULL, NULL, NULL)::stockcore.order_result;
                CONTINUE;
            END IF;
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

    SELECT * INTO d FROM stockcore.close_holds(end_ids, end_st, end_by, v_now);
    PERFORM stockcore.record_changes(ch, ch_from, ch_event, ch_by, ch_why, ch_req, false);
    levels := stockcore.apply_stock(d.shards, d.skus, d.on_hand, d.reserved, v_now);
END $$;

CREATE OR REPLACE FUNCTION stockcore.cancel_orders(
    p_ids text[], p_reasons text[], p_callers text[], p_request_ids text[],
    p_expiry_caller text,
    OUT results stockcore.order_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql AS $$
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
                results[i] := ROW(5, o, 'lapsed', NULL, NULL, NULL)::stockcore.order_result;
                CONTINUE;
            END IF;
            end_ids := end_ids || r.reservation_id; end_st := end_st || 3::smallint;
            end_by := end_by || p_callers[i];
        ELSE
            -- Paid, not shipped (the status machine allows nothing else here).
            back_ids := back_ids || o.order_id; back_by := back_by || p_callers[i];
            o.refund_owed_minor := o.paid_minor;
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
               (sku, kind, on_hand_delta, reserved_delta, order_id, adjustment_key, reason,
                caller, created_at)
        SELECT u.sk, 'adjust', u.q, 0, b.id, 'order-cancel:' || b.id || ':' || u.sk,
               'order ' || b.id || ' cancelled after payment', b.caller, v_now
          FROM unnest(back_ids, back_by) AS b(id, caller)
          JOIN stockcore.reservations x ON x.reservation_id = b.id,
               unnest(x.skus, x.quantities) AS u(sk, q);
        INSERT INTO stockcore.adjustments
               (idempotency_key, fingerprint, sku, applied_delta, on_hand_after, reserved_after,
                caller, created_at)
        SELECT 'order-cancel:' || b.id || ':' || u.sk,
               substr(sha256(convert_to(format('adjust|%s|%s|None|order %s cancelled after payment',
                                               u.sk, u.q, b.id), 'UTF8')), 1, 16),
               u.sk, u.q, l.on_hand, l.reserved, b.caller, v_now
          FROM unnest(back_ids, back_by) AS b(id, caller)
          JOIN stockcore.reservations x ON x.reservation_id = b.id,
               unnest(x.skus, x.quantities) AS u(sk, q)
          JOIN unnest(levels) AS l ON l.sku = u.sk;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION stockcore.expire_due(
    p_limit int, p_caller text, p_request_id text,
    OUT due int, OUT holds_expired int, OUT orders_expired int, OUT lag_seconds float8[],
    OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql AS $$
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

-- Replaced by read_stock, take_stock and close_holds above; level_of was never used.
DROP FUNCTION stockcore.end_holds(text[], smallint[], text[], timestamptz);
DROP FUNCTION stockcore.lock_stock(smallint[], text[]);
DROP FUNCTION stockcore.level_of(smallint, text);

-- These functions only ever look rows up by key, a batch's worth at a time. A generic
-- plan is made once per session, from the statistics of that moment: made while a table
-- was still small it may scan the table (or join it by hash, or by merge over a full
-- index scan), and keep doing so as the table grows. Inside them every plan they cache
-- is a nested loop of index lookups.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'stockcore.hold_stock(text[], bytea[], bigint[], text[], int[], int[], smallint[], text[], bigint[])',
        'stockcore.finish_holds(text[], smallint, text[])',
        'stockcore.create_orders(text[], bytea[], bigint[], text[], int[], int[], smallint[], text[], bigint[], bigint[], text[], text[], bigint[], bytea[], text[])',
        'stockcore.pay_orders(text[], text[], bigint[], text[], text[], text[], text[], text)',
        'stockcore.cancel_orders(text[], text[], text[], text[], text)',
        'stockcore.advance_orders(smallint, text[], text[], text[], text[], timestamptz[], text[], text[], text[])',
        'stockcore.expire_due(int, text, text)',
        'stockcore.next_events(int)'
    ]::regprocedure[] LOOP
        EXECUTE format('ALTER FUNCTION %s SET enable_seqscan = off', f);
        EXECUTE format('ALTER FUNCTION %s SET enable_hashjoin = off', f);
        EXECUTE format('ALTER FUNCTION %s SET enable_mergejoin = off', f);
    END LOOP;
END $$;
