-- Admission gate: for each reservation, hold every line or none, in Redis only.
-- ARGV: prefix, pending_deadline_ms, n, then per reservation: id, line count, (sku, qty)...
-- Per SKU the hash <prefix>s:<sku> mirrors PostgreSQL (oh = on_hand, rs = reserved,
-- v = version) plus pd, the units of admitted holds not yet settled by PostgreSQL.
-- Replies per reservation: {1} admitted (pending recorded), {2} id already known (ask
-- PostgreSQL), {3} mirror not loaded on this Redis server or SKU not mirrored (ask
-- PostgreSQL), {0, sku, available, ...} rejected with each short SKU.
-- The mirror counts as loaded only when <prefix>ready names this server's run_id (see
-- ready.lua): a marker that outlived a restart or came with a failover is not trusted.
local prefix = ARGV[1]
local deadline = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local marker = redis.call('GET', prefix .. 'ready')
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local ready = marker and string.sub(marker, 1, #run_id + 1) == run_id .. '|'
local replies = {}
local pos = 4
for i = 1, n do
  local rid = ARGV[pos]
  local count = tonumber(ARGV[pos + 1])
  local first = pos + 2
  pos = first + 2 * count
  local reply
  if not ready then
    reply = {3}
  elseif redis.call('EXISTS', prefix .. 'r:' .. rid, prefix .. 'p:' .. rid) > 0 then
    reply = {2}
  else
    local short = {0}
    local missing = false
    for j = 0, count - 1 do
      local sku = ARGV[first + 2 * j]
      local level = redis.call('HMGET', prefix .. 's:' .. sku, 'oh', 'rs', 'pd')
      if not level[1] then
        missing = true
        break
      end
      local available = tonumber(level[1]) - tonumber(level[2]) - tonumber(level[3] or '0')
      if available < tonumber(ARGV[first + 2 * j + 1]) then
        short[#short + 1] = sku
        short[#short + 1] = math.max(available, 0)
      end
    end
    if missing then
      reply = {3}
    elseif #short > 1 then
      reply = short
    else
      local record = {}
      for j = 0, count - 1 do
        local sku = ARGV[first + 2 * j]
        local qty = ARGV[first + 2 * j + 1]
        redis.call('HINCRBY', prefix .. 's:' .. sku, 'pd', qty)
        record[#record + 1] = sku
        record[#record + 1] = qty
      end
      redis.call('SET', prefix .. 'p:' .. rid, table.concat(record, '\n'))
      redis.call('ZADD', prefix .. 'pending', deadline, rid)
      reply = {1}
    end
  end
  replies[i] = reply
end
return replies
