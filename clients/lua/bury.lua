-- Move a poison event to the group's dead-letter stream: add it there, mark it dead in
-- the ledger and acknowledge its entry, together.
-- KEYS: ledger, stream, dead-letter stream.
-- ARGV: group, entry_id, event_id, event, consumer, error, ttl_ms, dead_maxlen.
local attempts = redis.call('HGET', KEYS[1], 'attempts') or '0'
local now = redis.call('TIME')
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*',
  'event_id', ARGV[3], 'entry_id', ARGV[2], 'event', ARGV[4], 'attempts', attempts,
  'error', ARGV[6], 'consumer', ARGV[5], 'buried_at_ms',
  tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
redis.call('HSET', KEYS[1], 'state', 'dead', 'error', ARGV[6])
redis.call('HDEL', KEYS[1], 'owner', 'entry', 'lease_until')
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
return id
