-- Let the relay move the published watermark back: when the Redis stream lost entries
-- (a restart without persistence, a failover that dropped writes), what it no longer
-- holds is published again from PostgreSQL, where events are kept.
CREATE FUNCTION stockcore.rewind_published(p_published_upto bigint) RETURNS void
LANGUAGE sql SET jit = off AS $$
    UPDATE stockcore.outbox_state SET published_upto = greatest(p_published_upto, 0)
$$;

CREATE FUNCTION stockcore.published_upto() RETURNS bigint
LANGUAGE sql STABLE SET jit = off AS $$
    SELECT published_upto FROM stockcore.outbox_state
$$;
