-- Append order events to the stream and move the marker to the last cursor, but only
-- when the marker is where the relay left it: a Redis server that lost writes (a restart
-- without them, a promoted replica) has a lower marker or none, and then nothing is
-- appended, so the events it lost can be published again first, in cursor order.
-- KEYS: stream, marker. ARGV: expected marker ('' when not known), then
-- (event_id, cursor, event) for each event, in cursor order.
-- Returns {1, marker before} when appended, {0, marker} when refused (marker: false if
-- missing).
local marker = redis.call('GET', KEYS[2])
if ARGV[1] ~= '' and tonumber(marker or '0') < tonumber(ARGV[1]) then
  return {0, marker}
end
for i = 2, #ARGV, 3 do
  redis.call('XADD', KEYS[1], '*', 'event_id', ARGV[i], 'cursor', ARGV[i + 1],
             'event', ARGV[i + 2])
end
redis.call('SET', KEYS[2], ARGV[#ARGV - 1])
return {1, marker}
