-- Record a handler's failure and give up the lease (when still ours), so the entry,
-- still pending, can be tried again at once by whoever claims it.
-- KEYS: ledger. ARGV: consumer, error, ttl_ms.
redis.call('HSET', KEYS[1], 'error', ARGV[2])
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'owner', 'entry', 'lease_until')
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
