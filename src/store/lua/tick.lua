-- The periodic work of one bucket, run by every instance (atomic, so instances may run it side
-- by side). KEYS[1]: the bucket's schedule. ARGV[1]: key base of the bucket, ARGV[2]: this
-- instance's consumer name, ARGV[3]: most sessions to end and entries to take,
-- ARGV[4]: idle time (ms) after which another consumer's unacknowledged entry is taken over,
-- ARGV[5]: idle time (ms) after which a consumer without pending entries is forgotten (0: keep).
-- 1. Ends the sessions whose moment has passed (reason expired), writing their events.
-- 2. Returns outbox entries for this consumer to publish: its own that it took before but did
--    not acknowledge (publishing failed), entries another consumer took but did not acknowledge
--    for ARGV[4] ms, then new ones. Each entry: id, then field/value list.
-- Preceded by `local base = ARGV[1]` and bucket.lua.
local consumer = ARGV[2]
local limit, stale_after, forget_after = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

local due = redis.call('ZRANGEBYSCORE', schedule_key, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #due, 2 do
  local session_id, ends = due[i], tonumber(due[i + 1])
  local stored = redis.call('HMGET', session_key(session_id), 'u', 'd')
  if stored[1] then
    end_session(session_id, stored[1], stored[2], 'expired', ends)
  else
    redis.call('ZREM', schedule_key, session_id)
  end
end

if redis.call('EXISTS', outbox_key) == 0 then
  return {}
end
redis.pcall('XGROUP', 'CREATE', outbox_key, 'relay', '0')
-- Consumers of instances that are gone would pile up in the group: forget the idle ones that
-- hold nothing.
if forget_after > 0 then
  for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', outbox_key, 'relay')) do
    local fields = {}
    for i = 1, #info, 2 do
      fields[info[i]] = info[i + 1]
    end
    if fields.name ~= consumer and fields.pending == 0 and fields.idle > forget_after then
      redis.call('XGROUP', 'DELCONSUMER', outbox_key, 'relay', fields.name)
    end
  end
end
local entries = {}
local function add(list)
  for _, entry in ipairs(list) do
    if #entries < limit and entry[2] then
      entries[#entries + 1] = entry
    end
  end
end
local function read(id)
  local read = redis.call('XREADGROUP', 'GROUP', 'relay', consumer, 'COUNT', limit,
    'STREAMS', outbox_key, id)
  return (read and read[1]) and read[1][2] or {}
end
add(read('0'))
add(redis.call('XAUTOCLAIM', outbox_key, 'relay', consumer, stale_after, '0-0',
  'COUNT', limit)[2])
if #entries < limit then
  add(read('>'))
end
return entries
