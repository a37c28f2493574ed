-- What the relay has published is one number, not a column of every event. Events are
-- published in cursor order, so "published" is exactly "cursor <= published_upto": the
-- relay records the highest cursor Redis took (with its next statement, or on its own
-- when idle) instead of updating every published row (a non-HOT update touching three
-- indexes per event). A crash between XADD and that record publishes the events again,
-- which the outbox already allows (consumers de-duplicate by event_id). published_at is
-- no longer set for new events.

CREATE TABLE stockcore.outbox_state (
    only_row       boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    published_upto bigint  NOT NULL
);
INSERT INTO stockcore.outbox_state (published_upto)
SELECT coalesce(max(cursor), 0) FROM stockcore.order_events WHERE published_at IS NOT NULL;

-- The relay's work lists: events to sequence (small), and the sequenced tail above the
-- watermark (read through the cursor index).
CREATE INDEX order_events_unsequenced ON stockcore.order_events (id) WHERE cursor IS NULL;
DROP INDEX stockcore.order_events_unpublished;

-- Record p_published_upto (when it moves the watermark on), sequence the next
-- unsequenced events (gap-free cursors, in id order), and return the sequenced events
-- above the watermark, oldest first: all the relay needs, in one statement. WatchOrders
-- readers are told the highest cursor given (at commit).
CREATE FUNCTION stockcore.relay_step(p_limit int, p_published_upto bigint)
RETURNS TABLE (id bigint, cursor bigint, event_id text, order_id text, customer_id text,
               type smallint, payload bytea, body text, created_at timestamptz)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
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
CREATE FUNCTION stockcore.record_published(p_published_upto bigint) RETURNS void
LANGUAGE sql AS $$
    UPDATE stockcore.outbox_state SET published_upto = p_published_upto
     WHERE published_upto < p_published_upto
$$;

-- Events waiting to be sequenced or published.
CREATE FUNCTION stockcore.outbox_backlog() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT (SELECT count(*) FROM stockcore.order_events WHERE cursor IS NULL)
         + greatest((SELECT coalesce(max(cursor), 0) FROM stockcore.order_events)
                    - (SELECT published_upto FROM stockcore.outbox_state), 0)
$$;

DROP FUNCTION stockcore.next_events(int);
