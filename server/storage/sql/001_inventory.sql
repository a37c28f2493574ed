-- Inventory: sharded stock rows, reservations (two-phase holds), the movement ledger
-- and adjustment idempotency. PostgreSQL is the authority; Redis only mirrors it.

CREATE SCHEMA IF NOT EXISTS stockcore;

CREATE TABLE stockcore.settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- One row per SKU. Rows live in hash shards (LIST partitions by `shard`); the shard is
-- crc32(sku) mod shard_count, computed by the application so shards can later move
-- to separate servers. The CHECKs make oversell impossible even for a buggy statement.
CREATE TABLE stockcore.stock (
    shard      smallint    NOT NULL,
    sku        text        NOT NULL,
    on_hand    bigint      NOT NULL,
    reserved   bigint      NOT NULL DEFAULT 0,
    version    bigint      NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard, sku),
    CONSTRAINT stock_reserved_not_negative CHECK (reserved >= 0),
    CONSTRAINT stock_never_oversold CHECK (on_hand >= reserved)
) PARTITION BY LIST (shard);

CREATE FUNCTION stockcore.ensure_stock_shards(p_count int) RETURNS void
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

-- status: 1 HELD, 2 COMMITTED, 3 RELEASED, 4 EXPIRED (server.domain.inventory.ReservationStatus).
-- Lines are kept as parallel arrays, merged per SKU and sorted, so a finish reads one row.
CREATE TABLE stockcore.reservations (
    reservation_id text        PRIMARY KEY,
    status         smallint    NOT NULL CHECK (status BETWEEN 1 AND 4),
    shards         smallint[]  NOT NULL,
    skus           text[]      NOT NULL,
    quantities     bigint[]    NOT NULL,
    fingerprint    bytea       NOT NULL,
    caller         text        NOT NULL,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    finished_at    timestamptz,
    CHECK ((status = 1) = (finished_at IS NULL))
);
CREATE INDEX reservations_held_by_expiry ON stockcore.reservations (expires_at) WHERE status = 1;
CREATE INDEX reservations_by_creation ON stockcore.reservations (created_at);

-- The audit trail: every change to on_hand or reserved, one row per SKU touched.
CREATE TABLE stockcore.movements (
    movement_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku            text        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('reserve', 'commit', 'release', 'expire', 'adjust')),
    on_hand_delta  bigint      NOT NULL,
    reserved_delta bigint      NOT NULL,
    reservation_id text,
    order_id       text,
    adjustment_key text,
    reason         text,
    caller         text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX movements_by_sku ON stockcore.movements (sku, movement_id);

CREATE FUNCTION stockcore.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER movements_append_only BEFORE UPDATE OR DELETE ON stockcore.movements
    FOR EACH ROW EXECUTE FUNCTION stockcore.refuse_change();

CREATE TABLE stockcore.adjustments (
    idempotency_key text        PRIMARY KEY,
    fingerprint     bytea       NOT NULL,
    sku             text        NOT NULL,
    applied_delta   bigint      NOT NULL,
    on_hand_after   bigint      NOT NULL,
    reserved_after  bigint      NOT NULL,
    caller          text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Result rows of the batch functions. kind 1: one per request (idx is its 1-based
-- position; code says what happened); kind 2: a short or unknown line of a rejected
-- reservation; kind 3: a touched SKU's level after the batch, for the Redis mirror.
CREATE TYPE stockcore.batch_row AS (
    kind        smallint,
    idx         int,
    code        smallint,
    status      smallint,
    created_at  timestamptz,
    expires_at  timestamptz,
    finished_at timestamptz,
    skus        text[],
    quantities  bigint[],
    sku         text,
    on_hand     bigint,
    reserved    bigint,
    version     bigint
);

-- Hold stock for many reservations in one transaction. Reservation i owns lines
-- p_first[i] .. p_first[i] + p_count[i] - 1 of the line arrays; lines are distinct SKUs.
-- Codes (kind 1): 0 held, 1 repeat of an earlier identical request, 2 id taken by a
-- different request, 3 rejected (kind 2 rows follow: code 3 short, with the units
-- available to it in on_hand; code 4 unknown SKU).
--
-- The batch's stock rows are locked first, in one global order (so batches never
-- deadlock), and read once; reservations are then admitted in turn against what is
-- left (each row inserted as it is admitted), and each SKU gets ONE conditional
-- UPDATE for the batch's total. Updating a
-- hot row once per batch, not once per reservation, keeps its version chain short.
CREATE FUNCTION stockcore.reserve_batch(
    p_ids text[], p_fingerprints bytea[], p_ttl_ms bigint[], p_callers text[],
    p_first int[], p_count int[], p_shards smallint[], p_skus text[], p_qtys bigint[]
) RETURNS SETOF stockcore.batch_row
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := now();
    u_skus     text[];
    u_left     bigint[];
    r          stockcore.reservations;
    o          stockcore.batch_row;
    k          int;
    fits       boolean;
    taken_idx  int[] := '{}';
    later_idx  int[] := '{}';
    v_rows     int;
    v_skus     int;
BEGIN
    SELECT array_agg(l.sku ORDER BY l.shard, l.sku), array_agg(l.on_hand - l.reserved ORDER BY l.shard, l.sku)
      INTO u_skus, u_left
      FROM (SELECT st.shard, st.sku, st.on_hand, st.reserved
              FROM stockcore.stock st
              JOIN (SELECT DISTINCT u.sh, u.sk FROM unnest(p_shards, p_skus) AS u(sh, sk)) t
                ON st.shard = t.sh AND st.sku = t.sk
             ORDER BY st.shard, st.sku
               FOR UPDATE OF st) l;

    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        -- Also finds an id held earlier in this batch: the row is already written.
        SELECT * INTO r FROM stockcore.reservations WHERE reservation_id = p_ids[i];
        IF FOUND THEN
            RETURN NEXT ROW(1, i, CASE WHEN r.fingerprint = p_fingerprints[i] THEN 1 ELSE 2 END,
                            r.status, r.created_at, r.expires_at, r.finished_at, r.skus,
                            r.quantities, NULL, NULL, NULL, NULL)::stockcore.batch_row;
            CONTINUE;
        END IF;
        fits := true;
        FOR j IN p_first[i] .. p_first[i] + p_count[i] - 1 LOOP
            k := array_position(u_skus, p_skus[j]);
            IF k IS NULL OR u_left[k] < p_qtys[j] THEN
                fits := false;
            END IF;
        END LOOP;
        IF fits THEN
            INSERT INTO stockcore.reservations
                   (reservation_id, status, shards, skus, quantities, fingerprint, caller,
                    created_at, expires_at)
            VALUES (p_ids[i], 1, p_shards[p_first[i] : p_first[i] + p_count[i] - 1],
                    p_skus[p_first[i] : p_first[i] + p_count[i] - 1],
                    p_qtys[p_first[i] : p_first[i] + p_count[i] - 1], p_fingerprints[i],
                    p_callers[i], v_now, v_now + p_ttl_ms[i] * interval '1 millisecond')
            ON CONFLICT (reservation_id) DO NOTHING;
            IF NOT FOUND THEN
                later_idx := later_idx || i;  -- a concurrent transaction created it first
                CONTINUE;
            END IF;
            FOR j IN p_first[i] .. p_first[i] + p_count[i] - 1 LOOP
                k := array_position(u_skus, p_skus[j]);
                u_left[k] := u_left[k] - p_qtys[j];
            END LOOP;
            taken_idx := taken_idx || i;
            CONTINUE;
        END IF;
        RETURN NEXT ROW(1, i, 3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)::stockcore.batch_row;
        FOR j IN p_first[i] .. p_first[i] + p_count[i] - 1 LOOP
            k := array_position(u_skus, p_skus[j]);
            IF k IS NULL THEN
                RETURN NEXT ROW(2, i, 4, NULL, NULL, NULL, NULL, NULL, NULL, p_skus[j], NULL, NULL, NULL)::stockcore.batch_row;
            ELSIF u_left[k] < p_qtys[j] THEN
                RETURN NEXT ROW(2, i, 3, NULL, NULL, NULL, NULL, NULL, NULL, p_skus[j],
                                greatest(u_left[k], 0), NULL, NULL)::stockcore.batch_row;
            END IF;
        END LOOP;
    END LOOP;

    UPDATE stockcore.stock st
       SET reserved = st.reserved + d.q, version = st.version + 1, updated_at = v_now
      FROM (SELECT p_shards[j] AS sh, p_skus[j] AS sk, sum(p_qtys[j]) AS q
              FROM unnest(taken_idx) AS a(i),
                   generate_series(p_first[a.i], p_first[a.i] + p_count[a.i] - 1) AS j
             GROUP BY 1, 2) d
     WHERE st.shard = d.sh AND st.sku = d.sk AND st.on_hand - st.reserved >= d.q;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    SELECT count(DISTINCT p_skus[j]) INTO v_skus
      FROM unnest(taken_idx) AS a(i), generate_series(p_first[a.i], p_first[a.i] + p_count[a.i] - 1) AS j;
    IF v_rows <> v_skus THEN
        RAISE EXCEPTION 'stock changed under the batch lock' USING ERRCODE = 'data_corrupted';
    END IF;

    INSERT INTO stockcore.movements
           (sku, kind, on_hand_delta, reserved_delta, reservation_id, caller, created_at)
    SELECT p_skus[j], 'reserve', 0, p_qtys[j], p_ids[a.i], p_callers[a.i], v_now
      FROM unnest(taken_idx) AS a(i), generate_series(p_first[a.i], p_first[a.i] + p_count[a.i] - 1) AS j;

    -- Held here (code 0); or found taken by a concurrent transaction (code 1 or 2,
    -- by fingerprint).
    RETURN QUERY
        SELECT 1::smallint, a.i,
               (CASE WHEN a.i = ANY (taken_idx) THEN 0
                     WHEN rr.fingerprint = p_fingerprints[a.i] THEN 1 ELSE 2 END)::smallint,
               rr.status, rr.created_at, rr.expires_at, rr.finished_at, rr.skus, rr.quantities,
               NULL::text, NULL::bigint, NULL::bigint, NULL::bigint
          FROM unnest(taken_idx || later_idx) AS a(i)
          JOIN stockcore.reservations rr ON rr.reservation_id = p_ids[a.i];

    RETURN QUERY
        SELECT 3::smallint, NULL::int, NULL::smallint, NULL::smallint, NULL::timestamptz,
               NULL::timestamptz, NULL::timestamptz, NULL::text[], NULL::bigint[],
               st.sku, st.on_hand, st.reserved, st.version
          FROM stockcore.stock st
          JOIN (SELECT DISTINCT u.sh, u.sk FROM unnest(p_shards, p_skus) AS u(sh, sk)) t
            ON st.shard = t.sh AND st.sku = t.sk;
END $$;

-- End HELD reservations: p_target 2 commits, 3 releases, 4 expires (only when due).
-- A commit or release that finds the hold past its expiry expires it instead.
-- Codes (kind 1): 0 applied (only the first request of an id in the batch), 1 left
-- as it was (see status), 4 unknown reservation. Each SKU gets one UPDATE per batch.
CREATE FUNCTION stockcore.finish_batch(p_ids text[], p_target smallint, p_callers text[])
RETURNS SETOF stockcore.batch_row
LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := now();
    ch_ids    text[];
    ch_status smallint[];
    ch_caller text[];
    v_rows    int;
    v_skus    int;
BEGIN
    -- Lock order everywhere: reservations by id, then stock rows by (shard, sku).
    PERFORM 1 FROM stockcore.reservations
     WHERE reservation_id = ANY (p_ids) ORDER BY reservation_id FOR UPDATE;

    -- A hold past its expiry is expired, whatever the caller asked; expiry of a hold
    -- not yet due changes nothing.
    SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}'), coalesce(array_agg(c.st ORDER BY c.id), '{}'),
           coalesce(array_agg(c.caller ORDER BY c.id), '{}')
      INTO ch_ids, ch_status, ch_caller
      FROM (SELECT rr.reservation_id AS id,
                   (CASE WHEN rr.expires_at <= v_now AND p_target IN (2, 3) THEN 4 ELSE p_target END)::smallint AS st,
                   (array_agg(u.caller ORDER BY u.idx))[1] AS caller
              FROM stockcore.reservations rr
              JOIN unnest(p_ids, p_callers) WITH ORDINALITY AS u(id, caller, idx) ON u.id = rr.reservation_id
             WHERE rr.status = 1 AND (p_target <> 4 OR rr.expires_at <= v_now)
             GROUP BY rr.reservation_id, rr.expires_at) c;

    PERFORM 1 FROM stockcore.stock st
      JOIN (SELECT DISTINCT u.sh, u.sk
              FROM stockcore.reservations rr, unnest(rr.shards, rr.skus) AS u(sh, sk)
             WHERE rr.reservation_id = ANY (ch_ids)) t
        ON st.shard = t.sh AND st.sku = t.sk
     ORDER BY st.shard, st.sku
       FOR UPDATE OF st;

    UPDATE stockcore.stock st
       SET on_hand = st.on_hand - d.oh, reserved = st.reserved - d.rs,
           version = st.version + 1, updated_at = v_now
      FROM (SELECT u.sh, u.sk, sum(CASE WHEN c.st = 2 THEN u.q ELSE 0 END) AS oh, sum(u.q) AS rs
              FROM unnest(ch_ids, ch_status) AS c(id, st)
              JOIN stockcore.reservations rr ON rr.reservation_id = c.id,
                   unnest(rr.shards, rr.skus, rr.quantities) AS u(sh, sk, q)
             GROUP BY u.sh, u.sk) d
     WHERE st.shard = d.sh AND st.sku = d.sk AND st.reserved >= d.rs AND st.on_hand >= d.oh;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    SELECT count(DISTINCT u.sk) INTO v_skus
      FROM stockcore.reservations rr, unnest(rr.skus) AS u(sk)
     WHERE rr.reservation_id = ANY (ch_ids);
    IF v_rows <> v_skus THEN
        RAISE EXCEPTION 'stock does not cover the holds being finished' USING ERRCODE = 'data_corrupted';
    END IF;

    UPDATE stockcore.reservations rr SET status = c.st, finished_at = v_now
      FROM unnest(ch_ids, ch_status) AS c(id, st)
     WHERE rr.reservation_id = c.id;

    INSERT INTO stockcore.movements
           (sku, kind, on_hand_delta, reserved_delta, reservation_id, caller, created_at)
    SELECT u.sk, CASE c.st WHEN 2 THEN 'commit' WHEN 3 THEN 'release' ELSE 'expire' END,
           CASE WHEN c.st = 2 THEN -u.q ELSE 0 END, -u.q, c.id, c.caller, v_now
      FROM unnest(ch_ids, ch_status, ch_caller) AS c(id, st, caller)
      JOIN stockcore.reservations rr ON rr.reservation_id = c.id,
           unnest(rr.skus, rr.quantities) AS u(sk, q);

    RETURN QUERY
        SELECT 1::smallint, u.idx::int,
               (CASE WHEN rr.reservation_id IS NULL THEN 4
                     WHEN u.id = ANY (ch_ids) AND u.idx = min(u.idx) OVER (PARTITION BY u.id) THEN 0
                     ELSE 1 END)::smallint,
               rr.status, rr.created_at, rr.expires_at, rr.finished_at, rr.skus, rr.quantities,
               NULL::text, NULL::bigint, NULL::bigint, NULL::bigint
          FROM unnest(p_ids) WITH ORDINALITY AS u(id, idx)
          LEFT JOIN stockcore.reservations rr ON rr.reservation_id = u.id;

    RETURN QUERY
        SELECT 3::smallint, NULL::int, NULL::smallint, NULL::smallint, NULL::timestamptz,
               NULL::timestamptz, NULL::timestamptz, NULL::text[], NULL::bigint[],
               st.sku, st.on_hand, st.reserved, st.version
          FROM stockcore.stock st
          JOIN (SELECT DISTINCT u.sh, u.sk
                  FROM stockcore.reservations rr, unnest(rr.shards, rr.skus) AS u(sh, sk)
                 WHERE rr.reservation_id = ANY (ch_ids)) t
            ON st.shard = t.sh AND st.sku = t.sk;
END $$;

-- Change one SKU's on_hand by p_delta or to p_set, creating the SKU when unknown.
-- Codes: 0 applied, 1 repeat of an earlier identical adjustment, 2 key taken by a
-- different adjustment, 3 refused (on_hand would fall below reserved; roll back).
CREATE FUNCTION stockcore.adjust_stock(
    p_key text, p_fingerprint bytea, p_shard smallint, p_sku text, p_delta bigint,
    p_set bigint, p_reason text, p_caller text
) RETURNS TABLE (code smallint, applied bigint, on_hand bigint, reserved bigint, version bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    a       stockcore.adjustments;
    s       stockcore.stock;
    after   stockcore.stock;
    v_delta bigint;
BEGIN
    SELECT * INTO a FROM stockcore.adjustments WHERE idempotency_key = p_key;
    IF FOUND THEN
        RETURN QUERY SELECT (CASE WHEN a.fingerprint = p_fingerprint THEN 1 ELSE 2 END)::smallint,
                            a.applied_delta, a.on_hand_after, a.reserved_after, NULL::bigint;
        RETURN;
    END IF;

    INSERT INTO stockcore.stock (shard, sku, on_hand) VALUES (p_shard, p_sku, 0) ON CONFLICT DO NOTHING;
    SELECT * INTO s FROM stockcore.stock WHERE shard = p_shard AND sku = p_sku FOR UPDATE;
    v_delta := coalesce(p_delta, p_set - s.on_hand);

    UPDATE stockcore.stock
       SET on_hand = on_hand + v_delta, version = version + 1, updated_at = now()
     WHERE shard = p_shard AND sku = p_sku AND on_hand + v_delta >= reserved
    RETURNING * INTO after;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 3::smallint, v_delta, s.on_hand, s.reserved, s.version;
        RETURN;
    END IF;
    s := after;

    INSERT INTO stockcore.movements
           (sku, kind, on_hand_delta, reserved_delta, adjustment_key, reason, caller)
    VALUES (p_sku, 'adjust', v_delta, 0, p_key, p_reason, p_caller);
    INSERT INTO stockcore.adjustments
           (idempotency_key, fingerprint, sku, applied_delta, on_hand_after, reserved_after, caller)
    VALUES (p_key, p_fingerprint, p_sku, v_delta, s.on_hand, s.reserved, p_caller);
    RETURN QUERY SELECT 0::smallint, v_delta, s.on_hand, s.reserved, s.version;
END $$;
