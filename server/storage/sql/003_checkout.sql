-- The checkout path, one statement per batch. Each order or stock operation is one
-- function that takes its locks, decides every request of the batch, writes the order,
-- status-history, outbox and ledger rows, and returns one typed row; the server only
-- validates requests before and maps the row to answers after. Nothing that decides (a
-- payment id is unused, a hold is not an order's) is read outside these locks.
--
-- Lock order, everywhere: orders by id, then reservations by id (an order's hold has
-- the order's id), then stock rows by (shard, sku). Stock rows are read and written one
-- at a time by statements naming their shard, so each statement's plan is made once per
-- session and prunes to one partition when it runs.
--
-- Every function returns the levels of the SKUs it touched (for the Redis mirror) and,
-- when it wrote order events, notifies channel stockcore_order_events at commit.

-- What the status machine allows, copied from server.domain.orders.TRANSITIONS by the
-- migrator at every start (server/storage/migrations.py): the Python table stays the
-- only one written by hand.
CREATE TABLE stockcore.order_transitions (
    from_status smallint NOT NULL,
    to_status   smallint NOT NULL,
    event_type  smallint NOT NULL,
    PRIMARY KEY (from_status, to_status)
);

-- Events written by these functions carry the order and its change as jsonb (body);
-- rows written before keep their serialized protobuf (payload). The relay and
-- WatchOrders turn either into the wire form.
ALTER TABLE stockcore.order_events ALTER COLUMN payload DROP NOT NULL;
ALTER TABLE stockcore.order_events ADD COLUMN body jsonb;
ALTER TABLE stockcore.order_events
    ADD CONSTRAINT order_events_have_content CHECK (payload IS NOT NULL OR body IS NOT NULL);

CREATE OR REPLACE FUNCTION stockcore.keep_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'order events are never deleted' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.payload IS DISTINCT FROM OLD.payload OR NEW.body IS DISTINCT FROM OLD.body
       OR NEW.event_id IS DISTINCT FROM OLD.event_id
       OR NEW.order_id IS DISTINCT FROM OLD.order_id OR NEW.type IS DISTINCT FROM OLD.type
       OR (OLD.cursor IS NOT NULL AND NEW.cursor IS DISTINCT FROM OLD.cursor) THEN
        RAISE EXCEPTION 'an order event is immutable but for its cursor and publication'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

-- A SKU's level after a batch, for the Redis mirror.
CREATE TYPE stockcore.stock_level AS (sku text, on_hand bigint, reserved bigint, version bigint);

-- One reservation request's outcome. code: 0 held, 1 repeat of an identical request
-- (reservation is the stored one), 2 the id belongs to a different request, 3 rejected:
-- unknown_skus, and short_skus with what is available of each to this request.
CREATE TYPE stockcore.hold_result AS (
    code            smallint,
    reservation     stockcore.reservations,
    short_skus      text[],
    short_available bigint[],
    unknown_skus    text[]
);

-- One Commit/Release/expiry request's outcome. code: 0 applied (reservation shows the
-- status it reached: EXPIRED when its hold had lapsed), 1 unchanged (it was already
-- finished; reservation shows how), 2 refused: the hold of an order, which only the
-- order may end, 4 unknown reservation.
CREATE TYPE stockcore.finish_result AS (code smallint, reservation stockcore.reservations);

-- One order request's outcome; codes are given per function. ord is the order after
-- the call (NULL when unknown or not created); detail says more about a refusal.
CREATE TYPE stockcore.order_result AS (
    code            smallint,
    ord             stockcore.orders,
    detail          text,
    short_skus      text[],
    short_available bigint[],
    unknown_skus    text[]
);

-- The outbox body of an order event: the order after the change and the change.
CREATE FUNCTION stockcore.event_body(o stockcore.orders, h stockcore.order_history)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('order', to_jsonb(o) - 'fingerprint', 'change', to_jsonb(h))
$$;

-- A level for the mirror, read under the caller's lock.
CREATE FUNCTION stockcore.level_of(p_shard smallint, p_sku text) RETURNS stockcore.stock_level
LANGUAGE sql STABLE AS $$
    SELECT ROW(st.sku, st.on_hand, st.reserved, st.version)::stockcore.stock_level
      FROM stockcore.stock st WHERE st.shard = p_shard AND st.sku = p_sku
$$;

-- Apply per-SKU deltas to stock rows, one statement per row, in lock order, each only
-- if it keeps the row consistent; returns the levels after. p_shards/p_skus are in lock
-- order and distinct. Raises data_corrupted if a delta does not fit: the callers
-- decided under the row locks, so that is a bug, and the whole batch rolls back.
CREATE FUNCTION stockcore.apply_stock(
    p_shards smallint[], p_skus text[], p_on_hand bigint[], p_reserved bigint[], p_now timestamptz
) RETURNS stockcore.stock_level[]
LANGUAGE plpgsql AS $$
DECLARE
    lvl    stockcore.stock_level;
    levels stockcore.stock_level[] := '{}';
BEGIN
    FOR k IN 1 .. coalesce(array_length(p_skus, 1), 0) LOOP
        UPDATE stockcore.stock st
           SET on_hand = st.on_hand + p_on_hand[k], reserved = st.reserved + p_reserved[k],
               version = st.version + 1, updated_at = p_now
         WHERE st.shard = p_shards[k] AND st.sku = p_skus[k]
           AND st.on_hand + p_on_hand[k] >= st.reserved + p_reserved[k]
           AND st.reserved + p_reserved[k] >= 0
        RETURNING st.sku, st.on_hand, st.reserved, st.version INTO lvl;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'stock % does not cover the batch decided under its lock', p_skus[k]
                USING ERRCODE = 'data_corrupted';
        END IF;
        levels := levels || lvl;
    END LOOP;
    RETURN levels;
END $$;

-- Lock the stock rows of p_shards/p_skus (any order, repeats allowed) one at a time in
-- lock order. Returns them distinct, in lock order, with their levels (NULL for
-- unknown SKUs).
CREATE FUNCTION stockcore.lock_stock(
    p_shards smallint[], p_skus text[],
    OUT shards smallint[], OUT skus text[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql AS $$
DECLARE
    lvl stockcore.stock_level;
BEGIN
    SELECT coalesce(array_agg(d.sh ORDER BY d.sh, d.sk), '{}'), coalesce(array_agg(d.sk ORDER BY d.sh, d.sk), '{}')
      INTO shards, skus
      FROM (SELECT DISTINCT u.sh, u.sk FROM unnest(p_shards, p_skus) AS u(sh, sk)) d;
    levels := '{}';
    FOR k IN 1 .. coalesce(array_length(skus, 1), 0) LOOP
        lvl := NULL;
        SELECT st.sku, st.on_hand, st.reserved, st.version INTO lvl
          FROM stockcore.stock st
         WHERE st.shard = shards[k] AND st.sku = skus[k]
           FOR UPDATE;
        levels := levels || lvl;
    END LOOP;
END $$;

-- Hold stock for many reservations, sorted by id (duplicates adjacent). Reservation i
-- owns lines p_first[i] .. p_first[i] + p_count[i] - 1 of the line arrays (distinct
-- SKUs). Stock rows are locked first, in lock order, and read once; reservations are
-- then admitted in turn against what is left, all lines or none; each SKU gets ONE
-- update for the batch's total, which keeps a hot row's version chain short.
CREATE FUNCTION stockcore.hold_stock(
    p_ids text[], p_fingerprints bytea[], p_ttl_ms bigint[], p_callers text[],
    p_first int[], p_count int[], p_shards smallint[], p_skus text[], p_qtys bigint[],
    OUT results stockcore.hold_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := now();
    n          int := coalesce(array_length(p_ids, 1), 0);
    l_shards   smallint[];
    l_skus     text[];
    l_levels   stockcore.stock_level[];
    u_left     bigint[];
    u_take     bigint[];
    existing   stockcore.reservations[];
    e          int := 1;
    admitted   int[] := '{}';
    inserted   stockcore.reservations[];
    r          stockcore.reservations;
    res        stockcore.hold_result;
    k          int;
    fits       boolean;
    s_skus     text[];
    s_avail    bigint[];
    unknown    text[];
    prev_held  boolean := false;
    changed    int[] := '{}';
BEGIN
    SELECT l.shards, l.skus, l.levels INTO l_shards, l_skus, l_levels
      FROM stockcore.lock_stock(p_shards, p_skus) l;
    u_left := array_fill(0::bigint, ARRAY[coalesce(array_length(l_skus, 1), 0)]);
    u_take := u_left;

    -- Decide every request, then insert the admitted ones in one statement. A concurrent
    -- transaction may have created one of these ids meanwhile (the insert waited for it):
    -- then the rows just inserted are taken back and the batch decided again, that id now
    -- answered by its fingerprint, so its units stay available to the rest of the batch.
    LOOP
        SELECT coalesce(array_agg(x ORDER BY x.reservation_id), '{}') INTO existing
          FROM stockcore.reservations x WHERE x.reservation_id = ANY (p_ids);
        FOR k IN 1 .. coalesce(array_length(l_skus, 1), 0) LOOP
            u_left[k] := (l_levels[k]).on_hand - (l_levels[k]).reserved;
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
                k := array_position(l_skus, p_skus[j]);
                IF l_levels[k] IS NULL THEN
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
                k := array_position(l_skus, p_skus[j]);
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
    END LOOP;
    changed := admitted;
    -- Repeats within the batch answer with the row held earlier in it.
    FOR i IN 2 .. n LOOP
        res := results[i];
        IF res.reservation IS NULL AND res.code IN (1, 2) THEN
            res.reservation := (results[i - 1]).reservation;
            results[i] := res;
        END IF;
    END LOOP;

    -- What the inserted reservations take, per SKU; one update each.
    FOREACH k IN ARRAY changed LOOP
        FOR j IN p_first[k] .. p_first[k] + p_count[k] - 1 LOOP
            u_take[array_position(l_skus, p_skus[j])] := u_take[array_position(l_skus, p_skus[j])] + p_qtys[j];
        END LOOP;
    END LOOP;
    levels := '{}';
    FOR k IN 1 .. coalesce(array_length(l_skus, 1), 0) LOOP
        IF l_levels[k] IS NULL THEN
            CONTINUE;
        ELSIF u_take[k] = 0 THEN
            levels := levels || l_levels[k];
        ELSE
            levels := levels || stockcore.apply_stock(
                ARRAY[l_shards[k]], ARRAY[l_skus[k]], ARRAY[0::bigint], ARRAY[u_take[k]], v_now);
        END IF;
    END LOOP;

    INSERT INTO stockcore.movements
           (sku, kind, on_hand_delta, reserved_delta, reservation_id, caller, created_at)
    SELECT p_skus[j], 'reserve', 0, p_qtys[j], p_ids[a.i], p_callers[a.i], v_now
      FROM unnest(changed) AS a(i),
           generate_series(p_first[a.i], p_first[a.i] + p_count[a.i] - 1) AS j;
END $$;

-- Plain Commit (p_target 2) or Release (3) of HELD reservations, ids sorted. A hold past
-- its expiry is expired instead. The hold of an order is refused: only the order may
-- end it (ConfirmPayment, CancelOrder, expiry). The first request of an id applies; a
-- repeat in the same batch sees the result.
CREATE FUNCTION stockcore.finish_holds(
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

    levels := stockcore.end_holds(done_ids, done_st, done_by, v_now);
END $$;

-- End HELD holds already locked by the caller (ids sorted, with the status each
-- reaches and who ends it): the reservation rows, the ledger and one stock update per
-- SKU. Returns the levels after.
CREATE FUNCTION stockcore.end_holds(
    p_ids text[], p_status smallint[], p_callers text[], p_now timestamptz
) RETURNS stockcore.stock_level[]
LANGUAGE plpgsql AS $$
DECLARE
    d_shards smallint[];
    d_skus   text[];
    d_oh     bigint[];
    d_rs     bigint[];
BEGIN
    IF coalesce(array_length(p_ids, 1), 0) = 0 THEN
        RETURN '{}';
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
      INTO d_shards, d_skus, d_oh, d_rs
      FROM (SELECT u.sh, u.sk, -sum(CASE WHEN c.st = 2 THEN u.q ELSE 0 END) AS oh, -sum(u.q) AS rs
              FROM unnest(p_ids, p_status) AS c(id, st)
              JOIN stockcore.reservations rr ON rr.reservation_id = c.id,
                   unnest(rr.shards, rr.skus, rr.quantities) AS u(sh, sk, q)
             GROUP BY u.sh, u.sk) d;
    PERFORM stockcore.lock_stock(d_shards, d_skus);
    RETURN stockcore.apply_stock(d_shards, d_skus, d_oh, d_rs, p_now);
END $$;

-- Write order changes already decided under the caller's locks: the order rows (each
-- from the version it was read at), their history rows and their events. p_orders are
-- the orders after the change (p_new: just created).
CREATE FUNCTION stockcore.record_changes(
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

-- The event of moving an order along p_path to p_wanted: 0 when the move was made
-- already (a repeat), NULL when the status machine does not allow it.
CREATE FUNCTION stockcore.order_move(p_path smallint[], p_wanted smallint) RETURNS smallint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_wanted = ANY (p_path) THEN 0::smallint
                ELSE (SELECT t.event_type FROM stockcore.order_transitions t
                       WHERE t.from_status = p_path[cardinality(p_path)] AND t.to_status = p_wanted)
           END
$$;

-- CreateOrder for a batch, sorted by order id. The hold arguments are hold_stock's (the
-- order's hold has the order's id); the rest is per order, and p_prices per line.
-- Codes: 0 created, 1 repeat (ord is the order as it is now), 2 the id belongs to a
-- different order or to a plain reservation, 3 rejected (unknown or short SKUs).
CREATE FUNCTION stockcore.create_orders(
    p_ids text[], p_fingerprints bytea[], p_ttl_ms bigint[], p_callers text[],
    p_first int[], p_count int[], p_shards smallint[], p_skus text[], p_qtys bigint[],
    p_prices bigint[], p_customers text[], p_currencies text[], p_totals bigint[],
    p_order_fingerprints bytea[], p_request_ids text[],
    OUT results stockcore.order_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql AS $$
DECLARE
    n        int := coalesce(array_length(p_ids, 1), 0);
    holds    stockcore.hold_result[];
    h        stockcore.hold_result;
    fresh    stockcore.orders[] := '{}';
    fresh_i  int[] := '{}';
    repeats  text[] := '{}';
    found    stockcore.orders[];
    o        stockcore.orders;
    e        int;
BEGIN
    SELECT x.results, x.levels INTO holds, levels
      FROM stockcore.hold_stock(p_ids, p_fingerprints, p_ttl_ms, p_callers, p_first, p_count,
                                p_shards, p_skus, p_qtys) x;
    results := array_fill(NULL::stockcore.order_result, ARRAY[n]);
    FOR i IN 1 .. n LOOP
        h := holds[i];
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
            CONTINUE WHEN (holds[i]).code <> 1;
            results[i] := ROW(2, NULL, NULL, NULL, NULL, NULL)::stockcore.order_result;
            FOR e IN 1 .. cardinality(found) LOOP
                IF (found[e]).order_id = p_ids[i] AND (found[e]).fingerprint = p_order_fingerprints[i] THEN
                    results[i] := ROW(1, found[e], NULL, NULL, NULL, NULL)::stockcore.order_result;
                END IF;
            END LOOP;
        END LOOP;
    END IF;
END $$;

-- Lock the named orders (ids sorted; repeats allowed), then their holds; returns both,
-- distinct, in id order.
CREATE FUNCTION stockcore.lock_orders(
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

-- ConfirmPayment for a batch, sorted by order id. Codes: 0 paid, 1 repeat (this payment
-- paid it; ord as it is now), 2 unknown order, 3 the amount or currency differs from the
-- order's, 4 the payment id already paid another order (detail names it), 5 the status
-- machine refuses (ord shows the status; detail 'other-payment' when another payment
-- paid it, 'lapsed' when its hold had lapsed and the order expired now), 6 the order and
-- its hold disagree (a bug; nothing is written for it).
--
-- The payment row is inserted first, under the order's lock: a payment id taken by a
-- concurrent transaction makes this insert wait for it and then conflict.
CREATE FUNCTION stockcore.pay_orders(
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

    levels := stockcore.end_holds(end_ids, end_st, end_by, v_now);
    PERFORM stockcore.record_changes(ch, ch_from, ch_event, ch_by, ch_why, ch_req, false);
END $$;

-- CancelOrder for a batch, sorted by order id. Unpaid: the hold is released. Paid (not
-- shipped): the units go back on hand by adjustments (key "order-cancel:<id>:<sku>")
-- and the payment is owed back. Codes: 0 cancelled, 1 repeat, 2 unknown order, 5 the
-- status machine refuses (detail 'lapsed' when its hold had lapsed and the order
-- expired now), 6 the order and its hold disagree.
CREATE FUNCTION stockcore.cancel_orders(
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
    adj       stockcore.stock_level[];
    d_shards  smallint[];
    d_skus    text[];
    d_back    bigint[];
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

    levels := stockcore.end_holds(end_ids, end_st, end_by, v_now);

    IF cardinality(back_ids) > 0 THEN
        -- Paid orders' units go back on hand: one adjustment and movement per line.
        SELECT array_agg(d.sh ORDER BY d.sh, d.sk), array_agg(d.sk ORDER BY d.sh, d.sk),
               array_agg(d.q ORDER BY d.sh, d.sk)
          INTO d_shards, d_skus, d_back
          FROM (SELECT rr.sh, rr.sk, sum(rr.q) AS q
                  FROM unnest(back_ids) AS b(id)
                  JOIN stockcore.reservations x ON x.reservation_id = b.id,
                       unnest(x.shards, x.skus, x.quantities) AS rr(sh, sk, q)
                 GROUP BY rr.sh, rr.sk) d;
        PERFORM stockcore.lock_stock(d_shards, d_skus);
        adj := stockcore.apply_stock(d_shards, d_skus, d_back,
                                     array_fill(0::bigint, ARRAY[cardinality(d_skus)]), v_now);
        levels := levels || adj;
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
          JOIN unnest(adj) AS l ON l.sku = u.sk;
    END IF;

    PERFORM stockcore.record_changes(ch, ch_from, ch_event, ch_by, ch_why, ch_req, false);
END $$;

-- ShipOrder (p_target 3), RecordInTransit (4) and RecordDelivery (5) for a batch, sorted
-- by order id. For 3, p_carriers/p_tracking/p_acks name the parcel; for 4 and 5,
-- p_times are the carrier's times. Codes: 0 moved, 1 repeat, 2 unknown order, 5 the
-- status machine refuses (detail 'other-parcel' when it shipped as another parcel).
CREATE FUNCTION stockcore.advance_orders(
    p_target smallint, p_ids text[], p_carriers text[], p_tracking text[], p_acks text[],
    p_times timestamptz[], p_callers text[], p_request_ids text[], p_reasons text[],
    OUT results stockcore.order_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql AS $$
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
        v_move := stockcore.order_move(o.path, p_target);
        IF v_move = 0 THEN
            IF p_target = 3 AND (o.carrier, o.tracking_no) IS DISTINCT FROM (p_carriers[i], p_tracking[i]) THEN
                results[i] := ROW(5, o, 'other-parcel', NULL, NULL, NULL)::stockcore.order_result;
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
CREATE FUNCTION stockcore.expire_due(
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
    levels := stockcore.end_holds(
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
END $$;

-- Change one SKU's on_hand by p_delta or to p_set, creating the SKU when unknown, in one
-- statement (no surrounding transaction needed: a refused change writes nothing).
-- Codes: 0 applied, 1 repeat of an earlier identical adjustment, 2 key taken by a
-- different adjustment, 3 refused (on_hand would fall below reserved or below zero).
CREATE FUNCTION stockcore.adjust(
    p_key text, p_fingerprint bytea, p_shard smallint, p_sku text, p_delta bigint,
    p_set bigint, p_reason text, p_caller text
) RETURNS TABLE (code smallint, applied bigint, on_hand bigint, reserved bigint, version bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    a       stockcore.adjustments;
    s       stockcore.stock;
    v_delta bigint;
BEGIN
    SELECT * INTO a FROM stockcore.adjustments WHERE idempotency_key = p_key;
    IF FOUND THEN
        RETURN QUERY SELECT (CASE WHEN a.fingerprint = p_fingerprint THEN 1 ELSE 2 END)::smallint,
                            a.applied_delta, a.on_hand_after, a.reserved_after, NULL::bigint;
        RETURN;
    END IF;

    SELECT * INTO s FROM stockcore.stock WHERE shard = p_shard AND sku = p_sku FOR UPDATE;
    IF NOT FOUND THEN
        v_delta := coalesce(p_delta, p_set);
        IF v_delta < 0 THEN
            RETURN QUERY SELECT 3::smallint, v_delta, 0::bigint, 0::bigint, NULL::bigint;
            RETURN;
        END IF;
        INSERT INTO stockcore.stock (shard, sku, on_hand) VALUES (p_shard, p_sku, v_delta)
        ON CONFLICT DO NOTHING RETURNING * INTO s;
        IF NOT FOUND THEN
            -- Created concurrently: adjust the row that now exists.
            SELECT * INTO s FROM stockcore.stock WHERE shard = p_shard AND sku = p_sku FOR UPDATE;
            v_delta := coalesce(p_delta, p_set - s.on_hand);
            UPDATE stockcore.stock
               SET on_hand = on_hand + v_delta, version = version + 1, updated_at = now()
             WHERE shard = p_shard AND sku = p_sku AND on_hand + v_delta >= reserved
            RETURNING * INTO s;
            IF NOT FOUND THEN
                RETURN QUERY SELECT 3::smallint, v_delta, s.on_hand, s.reserved, s.version;
                RETURN;
            END IF;
        END IF;
    ELSE
        v_delta := coalesce(p_delta, p_set - s.on_hand);
        UPDATE stockcore.stock
           SET on_hand = on_hand + v_delta, version = version + 1, updated_at = now()
         WHERE shard = p_shard AND sku = p_sku AND on_hand + v_delta >= reserved
        RETURNING * INTO s;
        IF NOT FOUND THEN
            SELECT * INTO s FROM stockcore.stock WHERE shard = p_shard AND sku = p_sku;
            RETURN QUERY SELECT 3::smallint, v_delta, s.on_hand, s.reserved, s.version;
            RETURN;
        END IF;
    END IF;

    INSERT INTO stockcore.movements
           (sku, kind, on_hand_delta, reserved_delta, adjustment_key, reason, caller)
    VALUES (p_sku, 'adjust', v_delta, 0, p_key, p_reason, p_caller);
    INSERT INTO stockcore.adjustments
           (idempotency_key, fingerprint, sku, applied_delta, on_hand_after, reserved_after, caller)
    VALUES (p_key, p_fingerprint, p_sku, v_delta, s.on_hand, s.reserved, p_caller);
    RETURN QUERY SELECT 0::smallint, v_delta, s.on_hand, s.reserved, s.version;
END $$;

-- Levels of many SKUs, one statement per shard named (planned once, one partition each).
CREATE FUNCTION stockcore.stock_levels(p_shards smallint[], p_skus text[])
RETURNS SETOF stockcore.stock_level
LANGUAGE plpgsql STABLE AS $$
DECLARE
    s record;
BEGIN
    FOR s IN SELECT DISTINCT u FROM unnest(p_shards) u LOOP
        RETURN QUERY
            SELECT st.sku, st.on_hand, st.reserved, st.version FROM stockcore.stock st
             WHERE st.shard = s.u
               AND st.sku = ANY (ARRAY(SELECT x.sk FROM unnest(p_shards, p_skus) AS x(sh, sk)
                                        WHERE x.sh = s.u));
    END LOOP;
END $$;

-- Sequence the next unsequenced events (gap-free cursors, in id order) and return every
-- sequenced event not yet published, oldest first, in one statement for the relay;
-- tell WatchOrders readers the highest cursor given (at commit).
CREATE FUNCTION stockcore.next_events(p_limit int)
RETURNS TABLE (id bigint, cursor bigint, event_id text, order_id text, customer_id text,
               type smallint, payload bytea, body text, created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_last  bigint;
    v_count int;
BEGIN
    SELECT coalesce(max(e.cursor), 0) INTO v_last FROM stockcore.order_events e;
    UPDATE stockcore.order_events e
       SET cursor = v_last + n.rn
      FROM (SELECT x.id, row_number() OVER (ORDER BY x.id) AS rn
              FROM stockcore.order_events x
             WHERE x.published_at IS NULL AND x.cursor IS NULL
             ORDER BY x.id LIMIT p_limit) n
     WHERE e.id = n.id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        PERFORM pg_notify('stockcore_order_cursor', (v_last + v_count)::text);
    END IF;
    RETURN QUERY
        SELECT e.id, e.cursor, e.event_id, e.order_id, e.customer_id, e.type, e.payload,
               e.body::text, e.created_at
          FROM stockcore.order_events e
         WHERE e.published_at IS NULL AND e.cursor IS NOT NULL
         ORDER BY e.cursor LIMIT p_limit;
END $$;

-- Retire the old batch functions: the server calls the ones above.
DROP FUNCTION stockcore.reserve_batch(text[], bytea[], bigint[], text[], int[], int[], smallint[], text[], bigint[]);
DROP FUNCTION stockcore.finish_batch(text[], smallint, text[]);
DROP FUNCTION stockcore.adjust_stock(text, bytea, smallint, text, bigint, bigint, text, text);
DROP TYPE stockcore.batch_row;
