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
-- different request, 3 rejected (kind 2 rows follow: code 3 short, code 4 unknown SKU).
CREATE FUNCTION stockcore.reserve_batch(
    p_ids text[], p_fingerprints bytea[], p_ttl_ms bigint[], p_callers text[],
    p_first int[], p_count int[], p_shards smallint[], p_skus text[], p_qtys bigint[]
) RETURNS SETOF stockcore.batch_row
LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := now();
    r        stockcore.reservations;
    o        stockcore.batch_row;
    lo       int;
    hi       int;
    failed   int;
    s        stockcore.stock;
BEGIN
    -- Every batch locks its stock rows in one global order, so batches never deadlock.
    PERFORM 1 FROM stockcore.stock st
      JOIN (SELECT DISTINCT u.sh, u.sk FROM unnest(p_shards, p_skus) AS u(sh, sk)) t
        ON st.shard = t.sh AND st.sku = t.sk
     ORDER BY st.shard, st.sku
       FOR UPDATE OF st;

    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        lo := p_first[i];
        hi := p_first[i] + p_count[i] - 1;
        o := ROW(1, i, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

        SELECT * INTO r FROM stockcore.reservations WHERE reservation_id = p_ids[i];
        IF NOT FOUND THEN
            failed := NULL;
            FOR j IN lo .. hi LOOP
                UPDATE stockcore.stock
                   SET reserved = reserved + p_qtys[j], version = version + 1, updated_at = v_now
                 WHERE shard = p_shards[j] AND sku = p_skus[j] AND on_hand - reserved >= p_qtys[j];
                IF NOT FOUND THEN
                    failed := j;
                    EXIT;
                END IF;
            END LOOP;

            IF failed IS NOT NULL THEN
                -- Give back the lines held so far; the transaction still holds their locks.
                FOR j IN lo .. failed - 1 LOOP
                    UPDATE stockcore.stock
                       SET reserved = reserved - p_qtys[j], version = version + 1, updated_at = v_now
                     WHERE shard = p_shards[j] AND sku = p_skus[j] AND reserved >= p_qtys[j];
                END LOOP;
                o.code := 3;
                RETURN NEXT o;
                FOR j IN lo .. hi LOOP
                    SELECT * INTO s FROM stockcore.stock WHERE shard = p_shards[j] AND sku = p_skus[j];
                    IF NOT FOUND THEN
                        RETURN NEXT ROW(2, i, 4, NULL, NULL, NULL, NULL, NULL, NULL, p_skus[j], NULL, NULL, NULL)::stockcore.batch_row;
                    ELSIF s.on_hand - s.reserved < p_qtys[j] THEN
                        RETURN NEXT ROW(2, i, 3, NULL, NULL, NULL, NULL, NULL, NULL, p_skus[j], s.on_hand, s.reserved, s.version)::stockcore.batch_row;
                    END IF;
                END LOOP;
                CONTINUE;
            END IF;

            INSERT INTO stockcore.reservations
                   (reservation_id, status, shards, skus, quantities, fingerprint, caller,
                    created_at, expires_at)
            VALUES (p_ids[i], 1, p_shards[lo:hi], p_skus[lo:hi], p_qtys[lo:hi], p_fingerprints[i],
                    p_callers[i], v_now, v_now + p_ttl_ms[i] * interval '1 millisecond')
            ON CONFLICT (reservation_id) DO NOTHING
            RETURNING * INTO r;
            IF FOUND THEN
                INSERT INTO stockcore.movements
                       (sku, kind, on_hand_delta, reserved_delta, reservation_id, caller, created_at)
                SELECT p_skus[j], 'reserve', 0, p_qtys[j], p_ids[i], p_callers[i], v_now
                  FROM generate_series(lo, hi) AS j;
                o.code := 0;
                o.status := r.status;
                o.created_at := r.created_at;
                o.expires_at := r.expires_at;
                o.skus := r.skus;
                o.quantities := r.quantities;
                RETURN NEXT o;
                CONTINUE;
            END IF;

            -- A concurrent transaction inserted the same id first: undo ours, report theirs.
            FOR j IN lo .. hi LOOP
                UPDATE stockcore.stock
                   SET reserved = reserved - p_qtys[j], version = version + 1, updated_at = v_now
                 WHERE shard = p_shards[j] AND sku = p_skus[j] AND reserved >= p_qtys[j];
            END LOOP;
            SELECT * INTO r FROM stockcore.reservations WHERE reservation_id = p_ids[i];
        END IF;

        o.code := CASE WHEN r.fingerprint = p_fingerprints[i] THEN 1 ELSE 2 END;
        o.status := r.status;
        o.created_at := r.created_at;
        o.expires_at := r.expires_at;
        o.finished_at := r.finished_at;
        o.skus := r.skus;
        o.quantities := r.quantities;
        RETURN NEXT o;
    END LOOP;

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
-- Codes (kind 1): 0 applied, 1 left as it was (see status), 4 unknown reservation.
CREATE FUNCTION stockcore.finish_batch(p_ids text[], p_target smallint, p_callers text[])
RETURNS SETOF stockcore.batch_row
LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := now();
    r         stockcore.reservations;
    o         stockcore.batch_row;
    v_status  smallint;
    v_kind    text;
    v_count   int;
    t_shards  smallint[] := '{}';
    t_skus    text[] := '{}';
BEGIN
    -- Lock order everywhere: reservations by id, then stock rows by (shard, sku).
    PERFORM 1 FROM stockcore.reservations
     WHERE reservation_id = ANY (p_ids) ORDER BY reservation_id FOR UPDATE;
    PERFORM 1 FROM stockcore.stock st
      JOIN (SELECT DISTINCT u.sh, u.sk
              FROM stockcore.reservations rr, unnest(rr.shards, rr.skus) AS u(sh, sk)
             WHERE rr.reservation_id = ANY (p_ids) AND rr.status = 1) t
        ON st.shard = t.sh AND st.sku = t.sk
     ORDER BY st.shard, st.sku
       FOR UPDATE OF st;

    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        o := ROW(1, i, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
        SELECT * INTO r FROM stockcore.reservations WHERE reservation_id = p_ids[i];
        IF NOT FOUND THEN
            o.code := 4;
            RETURN NEXT o;
            CONTINUE;
        END IF;
        o.code := 1;
        IF r.status = 1 THEN
            v_status := p_target;
            -- A hold past its expiry is expired, whatever the caller asked.
            IF v_status IN (2, 3) AND r.expires_at <= v_now THEN
                v_status := 4;
            END IF;
            IF v_status <> 4 OR r.expires_at <= v_now THEN
                UPDATE stockcore.stock st
                   SET on_hand = st.on_hand - CASE WHEN v_status = 2 THEN u.q ELSE 0 END,
                       reserved = st.reserved - u.q,
                       version = st.version + 1,
                       updated_at = v_now
                  FROM unnest(r.shards, r.skus, r.quantities) AS u(sh, sk, q)
                 WHERE st.shard = u.sh AND st.sku = u.sk AND st.reserved >= u.q AND st.on_hand >= u.q;
                GET DIAGNOSTICS v_count = ROW_COUNT;
                IF v_count <> cardinality(r.skus) THEN
                    RAISE EXCEPTION 'stock of reservation % does not cover its hold', r.reservation_id
                        USING ERRCODE = 'data_corrupted';
                END IF;
                UPDATE stockcore.reservations SET status = v_status, finished_at = v_now
                 WHERE reservation_id = r.reservation_id
                RETURNING * INTO r;
                v_kind := CASE v_status WHEN 2 THEN 'commit' WHEN 3 THEN 'release' ELSE 'expire' END;
                INSERT INTO stockcore.movements
                       (sku, kind, on_hand_delta, reserved_delta, reservation_id, caller, created_at)
                SELECT u.sk, v_kind, CASE WHEN v_status = 2 THEN -u.q ELSE 0 END, -u.q,
                       r.reservation_id, p_callers[i], v_now
                  FROM unnest(r.skus, r.quantities) AS u(sk, q);
                t_shards := t_shards || r.shards;
                t_skus := t_skus || r.skus;
                o.code := 0;
            END IF;
        END IF;
        o.status := r.status;
        o.created_at := r.created_at;
        o.expires_at := r.expires_at;
        o.finished_at := r.finished_at;
        o.skus := r.skus;
        o.quantities := r.quantities;
        RETURN NEXT o;
    END LOOP;

    RETURN QUERY
        SELECT 3::smallint, NULL::int, NULL::smallint, NULL::smallint, NULL::timestamptz,
               NULL::timestamptz, NULL::timestamptz, NULL::text[], NULL::bigint[],
               st.sku, st.on_hand, st.reserved, st.version
          FROM stockcore.stock st
          JOIN (SELECT DISTINCT u.sh, u.sk FROM unnest(t_shards, t_skus) AS u(sh, sk)) t
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
