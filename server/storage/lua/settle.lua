-- Settle after PostgreSQL answered: drop pending holds, remember ids PostgreSQL now
-- knows, and mirror SKU levels. A level is written only when its version is newer
-- than the mirrored one, so settles may arrive in any order and still converge.
-- ARGV: prefix, then n_clear, id..., then n_known, (id, forget_at_ms)..., then
-- n_levels, (sku, on_hand, reserved, version)...
local prefix = ARGV[1]
local pos = 2

local function clear(rid)
  local key = prefix .. 'p:' .. rid
  local record = redis.call('GET', key)
  if record then
    local sku = nil
    for item in string.gmatch(record, '[^\n]+') do
      if sku == nil then
        sku = item
      else
        local skey = prefix .. 's:' .. sku
        if redis.call('EXISTS', skey) == 1 then
          redis.call('HINCRBY', skey, 'pd', -tonumber(item))
        end
        sku = nil
      end
    end
    redis.call('DEL', key)
  end
  redis.call('ZREM', prefix .. 'pending', rid)
end

local n = tonumber(ARGV[pos])
pos = pos + 1
for _ = 1, n do
  clear(ARGV[pos])
  pos = pos + 1
end

n = tonumber(ARGV[pos])
pos = pos + 1
for _ = 1, n do
  redis.call('SET', prefix .. 'r:' .. ARGV[pos], '1', 'PXAT', ARGV[pos + 1])
  pos = pos + 2
end

n = tonumber(ARGV[pos])
pos = pos + 1
local written = 0
for _ = 1, n do
  local key = prefix .. 's:' .. ARGV[pos]
  local version = tonumber(ARGV[pos + 3])
  local current = redis.call('HGET', key, 'v')
  if not current or tonumber(current) < version then
    redis.call('HSET', key, 'oh', ARGV[pos + 1], 'rs', ARGV[pos + 2], 'v', ARGV[pos + 3])
    written = written + 1
  end
  pos = pos + 4
end
return written
