-- Send a dead letter back to its group: add the event to the stream again, addressed to
-- that group alone (other groups acknowledge it unread), forget its attempts, and take
-- it off the dead-letter stream, together.
-- KEYS: dead-letter stream, stream, the event's ledger entry.
-- ARGV: dead entry id, group, event_id, event.
-- Returns the new stream entry id, or false when the dead letter is gone (replayed or
-- dropped meanwhile).
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return false
end
redis.call('DEL', KEYS[3])
local id = redis.call('XADD', KEYS[2], '*', 'event_id', ARGV[3], 'event', ARGV[4],
  'for_group', ARGV[2], 'replay_of', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return id
