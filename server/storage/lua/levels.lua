-- Read mirrored levels: ARGV: prefix, then SKUs. Reply: {} when the mirror is not
-- loaded on this Redis server (see ready.lua); else per SKU on_hand and reserved as
-- PostgreSQL last reported them (-1, -1 for a SKU the mirror does not hold).
local prefix = ARGV[1]
local marker = redis.call('GET', prefix .. 'ready')
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
if not marker or string.sub(marker, 1, #run_id + 1) ~= run_id .. '|' then
  return {}
end
local out = {}
for i = 2, #ARGV do
  local level = redis.call('HMGET', prefix .. 's:' .. ARGV[i], 'oh', 'rs')
  out[#out + 1] = tonumber(level[1] or '-1')
  out[#out + 1] = tonumber(level[2] or '-1')
end
return out
