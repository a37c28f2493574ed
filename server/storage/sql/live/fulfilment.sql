-- Fulfilment: the fulfilment workers take each paid order through the warehouse and a
-- carrier. One stockcore.fulfilments row per order, moved from stage to stage by the
-- worker that leases it; the order itself changes only through OrderService. Stages are
-- those of the fulfilment Stage enum: 1 HAND_OFF, 2 PACKING, 3 BOOKING, 4 RECORDING,
-- 5 TRACKING, 6 DELIVERED, 7 CANCELLING, 8 CANCELLED, 9 DEAD, 10 ELSEWHERE (the tables,
-- and what each stage means: 011_fulfilment.sql).
--
-- A worker claims due rows with a lease (claim_fulfilments), works on them outside the
-- database, and records what happened (record_fulfilments), which applies only while the
-- lease is still its own: a row whose worker died is claimed again once its lease passed.
--
-- A function that changes several rows locks them first, in order id order, and the
-- orders after them (the lock order of every function: the top of orders.sql).

-- ORDER_PAID reached the worker: a fulfilment to start, once. True when it is new.
CREATE OR REPLACE FUNCTION stockcore.fulfilment_paid(
    p_order_id text, p_customer_id text, p_skus text[], p_quantities bigint[],
    p_paid_at timestamptz, p_worker text
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stockcore.fulfilments (order_id, stage, customer_id, skus, quantities, paid_at)
    VALUES (p_order_id, 1, p_customer_id, p_skus, p_quantities, p_paid_at)
    ON CONFLICT (order_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO stockcore.fulfilment_history (order_id, stage, partner, what, detail, worker)
    VALUES (p_order_id, 1, '', 'paid', '', p_worker);
    RETURN true;
END $$;

-- ORDER_CANCELLED reached the worker. An order it never saw paid gets a CANCELLED row, so
-- a late ORDER_PAID starts nothing; a dead one goes to CANCELLING; any other unfinished
-- one is marked, and the worker that next claims it undoes what the partners hold. A row
-- leased by a worker keeps its due time (its lease). Returns the row's stage.
CREATE OR REPLACE FUNCTION stockcore.fulfilment_cancelled(
    p_order_id text, p_customer_id text, p_worker text
) RETURNS smallint
LANGUAGE plpgsql AS $$
DECLARE
    v_stage smallint;
BEGIN
    INSERT INTO stockcore.fulfilments AS f
           (order_id, stage, customer_id, skus, quantities, paid_at)
    VALUES (p_order_id, 8, p_customer_id, '{}', '{}', now())
    ON CONFLICT (order_id) DO UPDATE
       SET stage = CASE WHEN f.stage = 9 THEN 7 ELSE f.stage END,
           cancel_requested = f.stage IN (1, 2, 3, 4, 9),
           due_at = CASE WHEN f.lease_owner IS NULL THEN now() ELSE f.due_at END,
           updated_at = now()
     WHERE f.stage IN (1, 2, 3, 4, 9) AND NOT f.cancel_requested
    RETURNING f.stage INTO v_stage;
    IF v_stage IS NOT NULL THEN
        INSERT INTO stockcore.fulfilment_history (order_id, stage, partner, what, detail, worker)
        VALUES (p_order_id, v_stage, '', 'cancelled', 'the order was cancelled', p_worker);
    END IF;
    RETURN v_stage;
END $$;

-- Lease up to p_limit due rows to p_worker for p_lease_s seconds.
CREATE OR REPLACE FUNCTION stockcore.claim_fulfilments(p_worker text, p_limit int, p_lease_s float8)
RETURNS SETOF stockcore.fulfilments
LANGUAGE sql AS $$
    WITH due AS (
        SELECT order_id FROM stockcore.fulfilments
         WHERE stage IN (1, 2, 3, 4, 5, 7) AND due_at <= now()
         ORDER BY due_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    )
    UPDATE stockcore.fulfilments f
       SET lease = f.lease + 1, lease_owner = p_worker,
           due_at = now() + make_interval(secs => p_lease_s)
      FROM due
     WHERE f.order_id = due.order_id
    RETURNING f.*
$$;

-- What a worker did with the rows it leased, for a batch of them: the new stage and
-- fields, history rows and dead letters, and the orders' last_sync_at for every exchange
-- a partner acknowledged. Rows whose lease is no longer the one given are left alone (the
-- worker lost them to another). Returns the order ids recorded.
CREATE OR REPLACE FUNCTION stockcore.record_fulfilments(p_outcomes jsonb, p_history jsonb, p_worker text)
RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_ids    text[];
    v_synced text[];
BEGIN
    PERFORM 1 FROM stockcore.fulfilments f
     WHERE f.order_id IN (SELECT x.order_id FROM jsonb_to_recordset(p_outcomes) AS x(order_id text))
     ORDER BY f.order_id FOR UPDATE;
    WITH o AS (
        SELECT * FROM jsonb_to_recordset(p_outcomes) AS x(
            order_id text, lease bigint, stage smallint, due_in_s float8, attempts int,
            last_error text, synced boolean, warehouse_ref text, handed_off boolean,
            packed_at timestamptz, bind boolean, carrier text, booking_key text,
            tracking_no text, carrier_ack_id text, booked boolean, shipped boolean,
            in_transit_at timestamptz, delivered_at timestamptz)
    ), up AS (
        UPDATE stockcore.fulfilments f
           SET stage = o.stage,
               due_at = now() + make_interval(secs => o.due_in_s),
               attempts = o.attempts,
               last_error = o.last_error,
               last_sync_at = CASE WHEN o.synced THEN now() ELSE f.last_sync_at END,
               warehouse_ref = coalesce(o.warehouse_ref, f.warehouse_ref),
               handed_off_at = CASE WHEN o.handed_off THEN coalesce(f.handed_off_at, now())
                                    ELSE f.handed_off_at END,
               packed_at = coalesce(f.packed_at, o.packed_at),
               carrier = CASE WHEN o.bind THEN o.carrier ELSE f.carrier END,
               booking_key = CASE WHEN o.bind THEN o.booking_key ELSE f.booking_key END,
               tracking_no = coalesce(o.tracking_no, f.tracking_no),
               carrier_ack_id = coalesce(o.carrier_ack_id, f.carrier_ack_id),
               booked_at = CASE WHEN o.booked THEN coalesce(f.booked_at, now()) ELSE f.booked_at END,
               shipped_at = CASE WHEN o.shipped THEN coalesce(f.shipped_at, now()) ELSE f.shipped_at END,
               in_transit_at = coalesce(f.in_transit_at, o.in_transit_at),
               delivered_at = coalesce(f.delivered_at, o.delivered_at),
               lease_owner = NULL,
               updated_at = now()
          FROM o
         WHERE f.order_id = o.order_id AND f.lease = o.lease
        RETURNING f.order_id, coalesce(o.synced, false) AS synced
    )
    SELECT coalesce(array_agg(order_id), '{}'),
           coalesce(array_agg(order_id) FILTER (WHERE synced), '{}')
      INTO v_ids, v_synced
      FROM up;

    INSERT INTO stockcore.fulfilment_history (order_id, stage, partner, what, detail, worker)
    SELECT h.order_id, h.stage, h.partner, h.what, coalesce(h.detail, ''), p_worker
      FROM jsonb_to_recordset(p_history) AS h(order_id text, stage smallint, partner text,
                                               what text, detail text)
     WHERE h.order_id = ANY (v_ids);

    INSERT INTO stockcore.fulfilment_dead_letters
           (order_id, stage, partner, attempts, error, history, worker)
    SELECT d.order_id, d.dead_stage, d.dead_partner, d.attempts, coalesce(d.last_error, ''),
           (SELECT jsonb_agg(jsonb_build_object('at', h.at, 'stage', h.stage,
                   'partner', h.partner, 'what', h.what, 'detail', h.detail) ORDER BY h.id)
              FROM stockcore.fulfilment_history h WHERE h.order_id = d.order_id),
           p_worker
      FROM jsonb_to_recordset(p_outcomes) AS d(order_id text, dead_stage smallint,
                                               dead_partner text, attempts int, last_error text)
     WHERE d.dead_stage IS NOT NULL AND d.order_id = ANY (v_ids)
    ON CONFLICT (order_id) WHERE replayed_at IS NULL DO NOTHING;

    -- Orders are locked in id order, as the order functions lock them.
    PERFORM 1 FROM stockcore.orders WHERE order_id = ANY (v_synced) ORDER BY order_id FOR UPDATE;
    UPDATE stockcore.orders SET last_sync_at = now() WHERE order_id = ANY (v_synced);
    RETURN v_ids;
END $$;

-- Bind leased rows to the carrier they are about to be booked with, before any request
-- is sent (the lease stays). Returns the order ids bound (the others' leases were lost).
CREATE OR REPLACE FUNCTION stockcore.bind_fulfilments(
    p_ids text[], p_leases bigint[], p_carriers text[], p_keys text[], p_worker text
) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_ids text[];
BEGIN
    PERFORM 1 FROM stockcore.fulfilments f WHERE f.order_id = ANY (p_ids)
     ORDER BY f.order_id FOR UPDATE;
    WITH b AS (
        UPDATE stockcore.fulfilments f
           SET carrier = x.carrier, booking_key = x.booking_key, updated_at = now()
          FROM unnest(p_ids, p_leases, p_carriers, p_keys) AS x(order_id, lease, carrier, booking_key)
         WHERE f.order_id = x.order_id AND f.lease = x.lease
           AND (f.carrier IS NULL OR f.carrier = x.carrier)
        RETURNING f.order_id, f.carrier
    ), h AS (
        INSERT INTO stockcore.fulfilment_history (order_id, stage, partner, what, detail, worker)
        SELECT b.order_id, 3, b.carrier, 'bound', 'booking with this carrier only', p_worker FROM b
    )
    SELECT coalesce(array_agg(order_id), '{}') INTO v_ids FROM b;
    RETURN v_ids;
END $$;

-- Send a dead letter's order back to the stage that died, its attempts reset. Returns the
-- order id, or NULL when the letter is unknown or was replayed already.
CREATE OR REPLACE FUNCTION stockcore.replay_fulfilment_dead_letter(p_id bigint, p_by text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_letter stockcore.fulfilment_dead_letters;
BEGIN
    UPDATE stockcore.fulfilment_dead_letters
       SET replayed_at = now(), replayed_by = p_by
     WHERE id = p_id AND replayed_at IS NULL
    RETURNING * INTO v_letter;
    IF v_letter.id IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE stockcore.fulfilments
       SET stage = v_letter.stage, attempts = 0, last_error = NULL, due_at = now(),
           updated_at = now()
     WHERE order_id = v_letter.order_id AND stage = 9;
    INSERT INTO stockcore.fulfilment_history (order_id, stage, partner, what, detail, worker)
    VALUES (v_letter.order_id, v_letter.stage, v_letter.partner, 'replayed',
            format('dead letter %s replayed', p_id), p_by);
    RETURN v_letter.order_id;
END $$;

-- The stale-sync scan (one at a time): orders that should be moving (PAID, SHIPPED,
-- IN_TRANSIT) whose last sync is older than p_stale_s are counted; those a worker should
-- be moving are made due now, and a paid order the workers never heard of gets its
-- fulfilment. Dead, cancelled and elsewhere-shipped ones are counted, not pushed.
CREATE OR REPLACE FUNCTION stockcore.scan_stale_fulfilments(
    p_stale_s float8, p_worker text,
    OUT stale int, OUT oldest_s float8, OUT pushed int, OUT created int
)
LANGUAGE plpgsql AS $$
DECLARE
    v_ids text[];
BEGIN
    PERFORM pg_advisory_xact_lock(7561011);
    SELECT count(*)::int,
           coalesce(extract(epoch FROM now() - min(coalesce(o.last_sync_at, o.updated_at))), 0),
           coalesce(array_agg(o.order_id), '{}')
      INTO stale, oldest_s, v_ids
      FROM stockcore.orders o
     WHERE o.status IN (2, 3, 4)
       AND coalesce(o.last_sync_at, o.updated_at) < now() - make_interval(secs => p_stale_s);

    INSERT INTO stockcore.fulfilments (order_id, stage, customer_id, skus, quantities, paid_at)
    SELECT o.order_id, 1, o.customer_id, o.skus, o.quantities, coalesce(p.created_at, o.updated_at)
      FROM stockcore.orders o
      LEFT JOIN stockcore.payments p ON p.payment_id = o.payment_id
     WHERE o.order_id = ANY (v_ids) AND o.status = 2
     ORDER BY o.order_id
    ON CONFLICT (order_id) DO NOTHING;
    GET DIAGNOSTICS created = ROW_COUNT;

    PERFORM 1 FROM stockcore.fulfilments f
     WHERE f.order_id = ANY (v_ids) AND f.stage IN (1, 2, 3, 4, 5, 7)
       AND f.lease_owner IS NULL AND f.due_at > now()
     ORDER BY f.order_id FOR UPDATE;
    WITH p AS (
        UPDATE stockcore.fulfilments f
           SET due_at = now()
         WHERE f.order_id = ANY (v_ids) AND f.stage IN (1, 2, 3, 4, 5, 7)
           AND f.lease_owner IS NULL AND f.due_at > now()
        RETURNING f.order_id, f.stage
    )
    INSERT INTO stockcore.fulfilment_history (order_id, stage, partner, what, detail, worker)
    SELECT p.order_id, p.stage, '', 'stale', 'no sync within the stale threshold: pushed again',
           p_worker
      FROM p;
    GET DIAGNOSTICS pushed = ROW_COUNT;
END $$;
