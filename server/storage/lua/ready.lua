-- The mirror's ready marker, stamped with this Redis server's run_id, which changes at
-- every start and differs on a replica: a marker that outlived a restart with
-- persistence (RDB/AOF), or arrived with a failover, does not count.
-- ARGV: prefix, then a token to mark the mirror loaded, or nothing to ask whether it is.
-- Reply: 1 loaded (or just marked), 0 not loaded on this server.
local prefix = ARGV[1]
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
if ARGV[2] then
  redis.call('SET', prefix .. 'ready', run_id .. '|' .. ARGV[2])
  return 1
end
local marker = redis.call('GET', prefix .. 'ready')
if marker and string.sub(marker, 1, #run_id + 1) == run_id .. '|' then
  return 1
end
return 0
