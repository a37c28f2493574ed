-- Record that an event was handled and acknowledge its entry, together.
-- KEYS: ledger, stream. ARGV: group, entry_id, ttl_ms.
redis.call('HSET', KEYS[1], 'state', 'done')
redis.call('HDEL', KEYS[1], 'owner', 'entry', 'lease_until')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
