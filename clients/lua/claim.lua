-- Claim one event for one consumer of a group before handing it over (the group's
-- ledger entry for the event: a hash of state, attempts, owner, entry, lease_until,
-- error).
-- KEYS: ledger. ARGV: consumer, stream entry id, lease_ms, ttl_ms.
-- Returns {verdict, attempts, entry}: 'done' or 'dead' (handled or buried before: skip
-- it), 'busy' (another consumer holds a live lease on it, through `entry`), 'mine'
-- (handle it; attempts counts this one).
local key = KEYS[1]
local state = redis.call('HGET', key, 'state')
local attempts = tonumber(redis.call('HGET', key, 'attempts') or '0')
if state == 'done' or state == 'dead' then
  return {state, attempts, ''}
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local owner = redis.call('HGET', key, 'owner')
local lease_until = tonumber(redis.call('HGET', key, 'lease_until') or '0')
if owner and owner ~= ARGV[1] and lease_until > now_ms then
  return {'busy', attempts, redis.call('HGET', key, 'entry') or ''}
end
attempts = redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSET', key, 'owner', ARGV[1], 'entry', ARGV[2],
  'lease_until', now_ms + tonumber(ARGV[3]))
redis.call('PEXPIRE', key, ARGV[4])
return {'mine', attempts, ARGV[2]}
