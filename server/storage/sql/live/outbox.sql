-- The relay's side of the order event outbox (server/orders/relay.py, one relay at a
-- time under an advisory lock). A change inserts its event with cursor NULL
-- (stockcore.record_changes, orders.sql); the relay gives events gap-free increasing
-- cursors in id order, publishes them to Redis, and records how far Redis took them as
-- one watermark (stockcore.outbox_state.published_upto): events are published in cursor
-- order, so "published" is exactly "cursor <= published_upto". A crash between the
-- publication and that record publishes the events again, which the outbox allows
-- (consumers de-duplicate by event_id).
--
-- Index lookups only and no JIT, as in the batch functions (inventory.sql says why).

-- Record p_published_upto (when it moves the watermark on), sequence the next
-- unsequenced events (gap-free cursors, in id order), and return the sequenced events
-- above the watermark, oldest first: all the relay needs, in one statement. WatchOrders
-- readers are told the highest cursor given (at commit).
CREATE OR REPLACE FUNCTION stockcore.relay_step(p_limit int, p_published_upto bigint)
RETURNS TABLE (id bigint, cursor bigint, event_id text, order_id text, customer_id text,
               type smallint, payload bytea, body text, created_at timestamptz)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_upto  bigint;
    v_last  bigint;
    v_count int;
BEGIN
    UPDATE stockcore.outbox_state SET published_upto = p_published_upto
     WHERE published_upto < p_published_upto;
    SELECT s.published_upto INTO v_upto FROM stockcore.outbox_state s;
    SELECT coalesce(max(e.cursor), 0) INTO v_last FROM stockcore.order_events e;
    UPDATE stockcore.order_events e
       SET cursor = v_last + n.rn
      FROM (SELECT x.id, row_number() OVER (ORDER BY x.id) AS rn
              FROM stockcore.order_events x
             WHERE x.cursor IS NULL
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
         WHERE e.cursor > v_upto
         ORDER BY e.cursor LIMIT p_limit;
END $$;

-- Record that Redis took every event up to p_published_upto (the relay, when idle).
CREATE OR REPLACE FUNCTION stockcore.record_published(p_published_upto bigint) RETURNS void
LANGUAGE sql SET jit = off AS $$
    UPDATE stockcore.outbox_state SET published_upto = p_published_upto
     WHERE published_upto < p_published_upto
$$;

-- Let the relay move the published watermark back: when the Redis stream lost entries
-- (a restart without persistence, a failover that dropped writes), what it no longer
-- holds is published again from PostgreSQL, where events are kept.
CREATE OR REPLACE FUNCTION stockcore.rewind_published(p_published_upto bigint) RETURNS void
LANGUAGE sql SET jit = off AS $$
    UPDATE stockcore.outbox_state SET published_upto = greatest(p_published_upto, 0)
$$;

-- The watermark: every event up to this cursor is published.
CREATE OR REPLACE FUNCTION stockcore.published_upto() RETURNS bigint
LANGUAGE sql STABLE SET jit = off AS $$
    SELECT published_upto FROM stockcore.outbox_state
$$;

-- Events waiting to be sequenced or published.
CREATE OR REPLACE FUNCTION stockcore.outbox_backlog() RETURNS bigint
LANGUAGE sql STABLE SET jit = off AS $$
    SELECT (SELECT count(*) FROM stockcore.order_events WHERE cursor IS NULL)
         + greatest((SELECT coalesce(max(cursor), 0) FROM stockcore.order_events)
                    - (SELECT published_upto FROM stockcore.outbox_state), 0)
$$;
