-- Inventory: stock rows and the holds on them (Reserve, Commit, Release, the expiry of
-- plain holds, AdjustStock, GetStock). Each batch of requests of one kind is one call of
-- one function, which takes its locks, decides every request, writes the reservation and
-- ledger rows and returns typed rows (stockcore.hold_result, finish_result, stock_level:
-- 003_checkout.sql declares them) with the levels of the SKUs it touched, for the Redis
-- mirror. The tables are 001_inventory.sql's.
--
-- Lock order, everywhere (the whole list, with every function that takes locks, is at
-- the top of orders.sql): orders by id, then reservations by id (an order's hold has the
-- order's id), then payment ids, then stock rows by (shard, sku).
--
-- Hot stock rows are locked last, for as short a time as possible. A batch's stock row
-- is the one lock every concurrent batch of a hot SKU queues for, and a transaction
-- holds it until it commits; so everything a batch writes elsewhere (reservations,
-- orders, history, events, the ledger) is written first, and each stock row is changed
-- last by one conditional UPDATE for the batch's total, which also keeps a hot row's
-- version chain short. Holds decide against levels read without a lock (the Redis gate
-- already admitted them) and take the units with `UPDATE ... WHERE on_hand - reserved
-- >= take`. If a level fell meanwhile so that a take no longer fits, the batch is decided
-- again inside the same statement, this time with the rows locked first (the exception
-- block's subtransaction is rolled back); oversell stays impossible either way, and the
-- rare second pass costs one more round of statements, not a round trip.
--
-- Settings of the functions, here and in orders.sql and outbox.sql:
-- * plan_cache_mode = force_generic_plan on the statements that read or write one stock
--   row: they name one shard, so a plan made once prunes to one partition when it runs,
--   instead of being planned again for every batch.
-- * enable_seqscan, enable_hashjoin, enable_mergejoin off in the batch functions. They
--   only ever look rows up by key, a batch's worth at a time; a generic plan is made once
--   per session from the statistics of that moment, and one made while a table was still
--   small may scan it (or join it by hash, or by merge over a full index scan) and keep
--   doing so as the table grows. With these off every plan they cache is a nested loop
--   of index lookups.
-- * jit off. With seq scans off, any scan left, even of a one-row table, is priced at
--   10^10, far above jit_above_cost, and PostgreSQL compiled such a statement on every
--   call (relay_step's one-row UPDATE took 60-100 ms, 78 ms of it in LLVM). Statements
--   that touch a batch's worth of rows never gain from JIT; the server's sessions turn
--   it off too (server/storage/postgres.py), and these settings keep it off for any other
--   caller.

-- Make sure the stock table has p_count hash shards (LIST partitions by `shard`, the
-- shard being crc32(sku) mod shard_count, computed by the application); a database keeps
-- the count it was made with. The migrator calls this at every start.
CREATE OR REPLACE FUNCTION stockcore.ensure_stock_shards(p_count int) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    existing int;
BEGIN
    SELECT value::int INTO existing FROM stockcore.settings WHERE key = 'shard_count';
    IF existing IS NOT NULL AND existing <> p_count THEN
        RAISE EXCEPTION 'the database has % stock shards but % were asked for', existing, p_count
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 0 .. p_count - 1 LOOP
        -- fillfactor leaves room for HOT updates: stock rows are rewritten constantly.
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS stockcore.stock_s%s PARTITION OF stockcore.stock '
            'FOR VALUES IN (%s) WITH (fillfactor = 50)', lpad(i::text, 4, '0'), i);
    END LOOP;
    INSERT INTO stockcore.settings VALUES ('shard_count', p_count::text) ON CONFLICT DO NOTHING;
END $$;

-- Reserve for a batch of reservations, sorted by id (repeats adjacent). Reservation i
-- owns lines p_first[i] .. p_first[i] + p_count[i] - 1 of the line arrays (distinct
-- SKUs), and is held for customer p_customers[i] (NULL: a service's reservation).
-- Decided against levels read without a lock, then taken; decided again with the rows
-- locked when a take no longer fits (see the top of this file).
-- Result codes: 0 held, 1 repeat of an identical request (reservation is the stored
-- one), 2 the id belongs to a different request, 3 rejected: unknown_skus, and
-- short_skus with what is available of each to this request.
DROP FUNCTION IF EXISTS stockcore.hold_stock(text[], bytea[], bigint[], text[], int[], int[], smallint[], text[], bigint[]);
CREATE OR REPLACE FUNCTION stockcore.hold_stock(
    p_ids text[], p_fingerprints bytea[], p_ttl_ms bigint[], p_callers text[],
    p_customers text[], p_first int[], p_count int[], p_shards smallint[], p_skus text[],
    p_qtys bigint[],
    OUT results stockcore.hold_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE
    h record;
BEGIN
    BEGIN
        SELECT * INTO h FROM stockcore.hold_step(p_ids, p_fingerprints, p_ttl_ms, p_callers,
            p_customers, p_first, p_count, p_shards, p_skus, p_qtys, false);
        levels := stockcore.take_stock(h.shards, h.skus, h.takes, h.read, now());
    EXCEPTION WHEN serialization_failure THEN
        SELECT * INTO h FROM stockcore.hold_step(p_ids, p_fingerprints, p_ttl_ms, p_callers,
            p_customers, p_first, p_count, p_shards, p_skus, p_qtys, true);
        levels := stockcore.take_stock(h.shards, h.skus, h.takes, h.read, now());
    END;
    results := h.results;
END $$;

-- Decide a batch of holds (sorted by id, repeats adjacent) against levels read with or
-- without locks, insert the held reservations and their ledger rows; return what each
-- SKU must give (in lock order) for stockcore.take_stock, which the caller runs last.
DROP FUNCTION IF EXISTS stockcore.hold_step(text[], bytea[], bigint[], text[], int[], int[], smallint[], text[], bigint[], boolean);
CREATE OR REPLACE FUNCTION stockcore.hold_step(
    p_ids text[], p_fingerprints bytea[], p_ttl_ms bigint[], p_callers text[],
    p_customers text[], p_first int[], p_count int[], p_shards smallint[], p_skus text[],
    p_qtys bigint[], p_lock boolean,
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
    claimed    text[];
BEGIN
    IF p_lock THEN
        -- The second pass locks its stock rows before it decides, and a transaction
        -- inserting one of these ids may hold the id while it waits for one of those
        -- rows. So the ids are taken first (reservations before stock rows): each is
        -- inserted, which waits for any transaction inserting it, and deleted again at
        -- once. An id whose row this transaction deleted stays its own until it ends (an
        -- insert of it by another waits for this transaction, as for any row not yet
        -- committed), so the insert below takes it back without waiting.
        WITH c AS (
            INSERT INTO stockcore.reservations
                   (reservation_id, status, shards, skus, quantities, fingerprint, caller,
                    created_at, expires_at)
            SELECT p_ids[i], 1, '{}', '{}', '{}', p_fingerprints[i], p_callers[i], v_now, v_now
              FROM generate_subscripts(p_ids, 1) AS i
             WHERE i = 1 OR p_ids[i] <> p_ids[i - 1]
             ORDER BY i
            ON CONFLICT (reservation_id) DO NOTHING
            RETURNING reservation_id
        )
        SELECT coalesce(array_agg(c.reservation_id), '{}') INTO claimed FROM c;
        DELETE FROM stockcore.reservations x WHERE x.reservation_id = ANY (claimed);
    END IF;
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
                    created_at, expires_at, customer_id)
            SELECT p_ids[a.i], 1, p_shards[p_first[a.i] : p_first[a.i] + p_count[a.i] - 1],
                   p_skus[p_first[a.i] : p_first[a.i] + p_count[a.i] - 1],
                   p_qtys[p_first[a.i] : p_first[a.i] + p_count[a.i] - 1], p_fingerprints[a.i],
                   p_callers[a.i], v_now, v_now + p_ttl_ms[a.i] * interval '1 millisecond',
                   p_customers[a.i]
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

-- Plain Commit (p_target 2) or Release (3) of HELD reservations, ids sorted. A hold past
-- its expiry is expired instead. The hold of an order is refused: only the order may
-- end it (ConfirmPayment, CancelOrder, expiry). A request bound to a customer
-- (p_customers[i], NULL for a service's) ends only a reservation held for that customer.
-- The first request of an id applies; a repeat in the same batch sees the result.
-- Result codes: 0 applied (reservation shows the status it reached: EXPIRED when its hold
-- had lapsed), 1 unchanged (it was already finished; reservation shows how), 2 refused:
-- the hold of an order, 4 unknown reservation, 5 refused: not held for the request's
-- customer (reservation NULL: a customer learns nothing of another's).
DROP FUNCTION IF EXISTS stockcore.finish_holds(text[], smallint, text[]);
CREATE OR REPLACE FUNCTION stockcore.finish_holds(
    p_ids text[], p_target smallint, p_callers text[], p_customers text[],
    OUT results stockcore.finish_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
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
        IF p_customers[i] IS NOT NULL AND r.customer_id IS DISTINCT FROM p_customers[i] THEN
            results[i] := ROW(5, NULL)::stockcore.finish_result;
        ELSIF p_ids[i] = ANY (owned) THEN
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

-- SetReservationLine for a batch, sorted by reservation id (the changes of one reservation
-- in the order they came). Request i sets SKU p_skus[i] (of shard p_shards[i]) of
-- reservation p_ids[i] to p_qtys[i] units (0 removes the line) and holds the reservation
-- for p_ttl_ms[i] from now; p_customers[i] is the customer the request is bound to (NULL
-- for a service's), who may change only a reservation held for it. Units added are
-- decided against levels read without a lock and taken last, as hold_stock's are (and
-- decided again with the rows locked when a take no longer fits); units given back go
-- back in the same one UPDATE per SKU. Codes: 0 applied, 1 repeat of the request that
-- change_id names (reservation as it is now), 2 change_id belongs to a different change,
-- 3 short (available: what the reservation could hold of the SKU, its own units
-- included) or unknown SKU (available NULL), 4 unknown reservation, 5 not HELD, or its
-- hold lapsed (reservation shows it), 6 the hold of an order (changed only as the
-- order), 7 not held for the request's customer, 8 a new line beyond the 100 a
-- reservation may hold. 6 and 7 come without the reservation.
CREATE OR REPLACE FUNCTION stockcore.set_reservation_lines(
    p_ids text[], p_change_ids text[], p_fingerprints bytea[], p_shards smallint[],
    p_skus text[], p_qtys bigint[], p_ttl_ms bigint[], p_callers text[], p_customers text[],
    OUT results stockcore.line_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE
    s record;
BEGIN
    BEGIN
        SELECT * INTO s FROM stockcore.set_lines_step(p_ids, p_change_ids, p_fingerprints,
            p_shards, p_skus, p_qtys, p_ttl_ms, p_callers, p_customers, false);
    EXCEPTION WHEN serialization_failure THEN
        SELECT * INTO s FROM stockcore.set_lines_step(p_ids, p_change_ids, p_fingerprints,
            p_shards, p_skus, p_qtys, p_ttl_ms, p_callers, p_customers, true);
    END;
    results := s.results;
    levels := s.levels;
END $$;

-- set_reservation_lines' work, deciding against levels read with or without locks. Locks:
-- the reservations (rank 3 of the lock order), the change ids (rank 4: inserted at the
-- end, or, in the locking pass, taken before the stock rows as hold_step takes its ids),
-- the stock rows last (take_stock, with signed takes: what a batch gives back of a SKU
-- lowers its reserved units).
CREATE OR REPLACE FUNCTION stockcore.set_lines_step(
    p_ids text[], p_change_ids text[], p_fingerprints bytea[], p_shards smallint[],
    p_skus text[], p_qtys bigint[], p_ttl_ms bigint[], p_callers text[], p_customers text[],
    p_lock boolean,
    OUT results stockcore.line_result[], OUT levels stockcore.stock_level[]
)
LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := now();
    n        int := coalesce(array_length(p_ids, 1), 0);
    held     stockcore.reservations[];
    owned    text[];
    claimed  text[];
    known    stockcore.reservation_changes[];
    s_shards smallint[];
    s_skus   text[];
    s_read   stockcore.stock_level[];
    u_left   bigint[];
    takes    bigint[];
    r        stockcore.reservations;
    e        int := 1;
    k        int;
    pos      int;
    h        bigint;
    delta    bigint;
    c        stockcore.reservation_changes;
    done_ids text[] := '{}';
    done_fps bytea[] := '{}';
    applied  int[] := '{}';
    changed  text[] := '{}';
    m_skus   text[] := '{}';
    m_deltas bigint[] := '{}';
    m_ids    text[] := '{}';
    m_by     text[] := '{}';
BEGIN
    SELECT coalesce(array_agg(x::stockcore.reservations ORDER BY x.reservation_id), '{}') INTO held
      FROM (SELECT * FROM stockcore.reservations x
             WHERE x.reservation_id = ANY (p_ids) ORDER BY x.reservation_id FOR UPDATE) x;
    -- Read under those locks: an order takes a reservation only under its lock
    -- (order_holds), or is made with a hold it inserts itself (create_step).
    SELECT coalesce(array_agg(o.order_id), '{}') INTO owned
      FROM stockcore.orders o WHERE o.order_id = ANY (p_ids);
    IF p_lock THEN
        WITH ins AS (
            INSERT INTO stockcore.reservation_changes
                   (change_id, reservation_id, fingerprint, caller, created_at)
            SELECT x.id, '', '', '', v_now
              FROM (SELECT DISTINCT u AS id FROM unnest(p_change_ids) u) x
             ORDER BY x.id
            ON CONFLICT (change_id) DO NOTHING
            RETURNING change_id
        )
        SELECT coalesce(array_agg(ins.change_id), '{}') INTO claimed FROM ins;
        DELETE FROM stockcore.reservation_changes x WHERE x.change_id = ANY (claimed);
    END IF;
    SELECT coalesce(array_agg(x), '{}') INTO known
      FROM stockcore.reservation_changes x WHERE x.change_id = ANY (p_change_ids);
    SELECT x.shards, x.skus, x.levels INTO s_shards, s_skus, s_read
      FROM stockcore.read_stock(p_shards, p_skus, p_lock) x;
    u_left := array_fill(0::bigint, ARRAY[cardinality(s_skus)]);
    takes := u_left;
    FOR j IN 1 .. cardinality(s_skus) LOOP
        u_left[j] := (s_read[j]).on_hand - (s_read[j]).reserved;
    END LOOP;

    results := array_fill(NULL::stockcore.line_result, ARRAY[n]);
    FOR i IN 1 .. n LOOP
        WHILE e <= cardinality(held) AND (held[e]).reservation_id < p_ids[i] LOOP
            e := e + 1;
        END LOOP;
        IF e > cardinality(held) OR (held[e]).reservation_id <> p_ids[i] THEN
            results[i] := ROW(4, NULL, NULL)::stockcore.line_result;
            CONTINUE;
        END IF;
        r := held[e];
        IF p_customers[i] IS NOT NULL AND r.customer_id IS DISTINCT FROM p_customers[i] THEN
            results[i] := ROW(7, NULL, NULL)::stockcore.line_result;
            CONTINUE;
        ELSIF r.reservation_id = ANY (owned) THEN
            results[i] := ROW(6, NULL, NULL)::stockcore.line_result;
            CONTINUE;
        END IF;
        -- The change id: applied earlier in this batch, or before.
        pos := array_position(done_ids, p_change_ids[i]);
        IF pos IS NOT NULL THEN
            results[i] := ROW(CASE WHEN done_fps[pos] = p_fingerprints[i] THEN 1 ELSE 2 END,
                              r, NULL)::stockcore.line_result;
            CONTINUE;
        END IF;
        c := NULL;
        FOR j IN 1 .. cardinality(known) LOOP
            IF (known[j]).change_id = p_change_ids[i] THEN c := known[j]; EXIT; END IF;
        END LOOP;
        IF c.change_id IS NOT NULL THEN
            results[i] := ROW(CASE WHEN c.fingerprint = p_fingerprints[i] THEN 1 ELSE 2 END,
                              r, NULL)::stockcore.line_result;
            CONTINUE;
        END IF;
        IF r.status <> 1 OR r.expires_at <= v_now THEN
            results[i] := ROW(5, r, NULL)::stockcore.line_result;
            CONTINUE;
        END IF;
        k := array_position(s_skus, p_skus[i]);
        pos := array_position(r.skus, p_skus[i]);
        h := coalesce(r.quantities[pos], 0);
        delta := p_qtys[i] - h;
        IF delta > 0 THEN
            IF s_read[k] IS NULL THEN
                results[i] := ROW(3, r, NULL)::stockcore.line_result;
                CONTINUE;
            ELSIF pos IS NULL AND cardinality(r.skus) >= 100 THEN
                results[i] := ROW(8, r, NULL)::stockcore.line_result;
                CONTINUE;
            ELSIF u_left[k] < delta THEN
                results[i] := ROW(3, r, h + greatest(u_left[k], 0))::stockcore.line_result;
                CONTINUE;
            END IF;
        END IF;
        IF delta <> 0 THEN
            u_left[k] := u_left[k] - delta;
            takes[k] := takes[k] + delta;
            IF pos IS NULL THEN
                -- Lines stay sorted by SKU as Python sorts them (by code point).
                SELECT array_agg(u.sh ORDER BY u.sk COLLATE "C"), array_agg(u.sk ORDER BY u.sk COLLATE "C"),
                       array_agg(u.q ORDER BY u.sk COLLATE "C")
                  INTO r.shards, r.skus, r.quantities
                  FROM (SELECT * FROM unnest(r.shards, r.skus, r.quantities)
                        UNION ALL SELECT p_shards[i], p_skus[i], p_qtys[i]) AS u(sh, sk, q);
            ELSIF p_qtys[i] = 0 THEN
                r.shards := r.shards[:pos - 1] || r.shards[pos + 1:];
                r.skus := r.skus[:pos - 1] || r.skus[pos + 1:];
                r.quantities := r.quantities[:pos - 1] || r.quantities[pos + 1:];
            ELSE
                r.quantities[pos] := p_qtys[i];
            END IF;
            m_skus := m_skus || p_skus[i];
            m_deltas := m_deltas || delta;
            m_ids := m_ids || r.reservation_id;
            m_by := m_by || p_callers[i];
        END IF;
        r.expires_at := v_now + p_ttl_ms[i] * interval '1 millisecond';
        held[e] := r;
        changed := changed || r.reservation_id;
        done_ids := done_ids || p_change_ids[i];
        done_fps := done_fps || p_fingerprints[i];
        applied := applied || i;
        results[i] := ROW(0, r, NULL)::stockcore.line_result;
    END LOOP;

    UPDATE stockcore.reservations x
       SET shards = y.shards, skus = y.skus, quantities = y.quantities, expires_at = y.expires_at
      FROM unnest(held) y
     WHERE x.reservation_id = y.reservation_id AND y.reservation_id = ANY (changed);
    INSERT INTO stockcore.movements
           (sku, kind, on_hand_delta, reserved_delta, reservation_id, caller, created_at)
    SELECT m.sku, CASE WHEN m.delta > 0 THEN 'reserve' ELSE 'release' END, 0, m.delta, m.id,
           m.caller, v_now
      FROM unnest(m_skus, m_deltas, m_ids, m_by) AS m(sku, delta, id, caller);
    -- A change id another transaction took meanwhile fails the statement here
    -- (unique_violation): run again, it finds that change.
    INSERT INTO stockcore.reservation_changes
           (change_id, reservation_id, fingerprint, caller, created_at)
    SELECT p_change_ids[a.i], p_ids[a.i], p_fingerprints[a.i], p_callers[a.i], v_now
      FROM unnest(applied) AS a(i);
    levels := stockcore.take_stock(s_shards, s_skus, takes, s_read, v_now);
END $$;

-- End HELD holds already locked by the caller (ids sorted, with the status each reaches
-- and who ends it): the reservation rows and the ledger. Returns what each SKU gives back
-- (in lock order) for stockcore.apply_stock, which the caller runs last.
CREATE OR REPLACE FUNCTION stockcore.close_holds(
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

-- Stock rows, distinct and in lock order, with their levels (NULL for unknown SKUs);
-- with p_lock, each row is locked as it is read.
CREATE OR REPLACE FUNCTION stockcore.read_stock(
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
CREATE OR REPLACE FUNCTION stockcore.take_stock(
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

-- Apply per-SKU deltas to stock rows, one statement per row, in lock order, each only
-- if it keeps the row consistent; returns the levels after. p_shards/p_skus are in lock
-- order and distinct. Raises data_corrupted if a delta does not fit: the callers
-- decided under the row locks, so that is a bug, and the whole batch rolls back.
CREATE OR REPLACE FUNCTION stockcore.apply_stock(
    p_shards smallint[], p_skus text[], p_on_hand bigint[], p_reserved bigint[], p_now timestamptz
) RETURNS stockcore.stock_level[]
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
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

-- Levels of many SKUs, one statement per shard named (planned once, one partition each).
CREATE OR REPLACE FUNCTION stockcore.stock_levels(p_shards smallint[], p_skus text[])
RETURNS SETOF stockcore.stock_level
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan SET jit = off
AS $$
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

-- Change one SKU's on_hand by p_delta or to p_set, creating the SKU when unknown, in one
-- statement (no surrounding transaction needed: a refused change writes nothing).
-- Codes: 0 applied, 1 repeat of an earlier identical adjustment, 2 key taken by a
-- different adjustment, 3 refused (on_hand would fall below reserved or below zero).
CREATE OR REPLACE FUNCTION stockcore.adjust(
    p_key text, p_fingerprint bytea, p_shard smallint, p_sku text, p_delta bigint,
    p_set bigint, p_reason text, p_caller text
) RETURNS TABLE (code smallint, applied bigint, on_hand bigint, reserved bigint, version bigint)
LANGUAGE plpgsql
SET jit = off
AS $$
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
