-- tick.lua: the periodic work of one bucket, run by every instance (atomic, so instances may run
-- it side by side).
-- 1. Ends the sessions whose moment has passed (reason expired), writing their events.
-- 2. Returns outbox entries for this consumer to publish: its own that it took before but did
--    not acknowledge (publishing failed), entries another consumer took but did not acknowledge
--    for stale_after ms, then new ones; at most `limit` in all. Each entry: id, then its
--    field/value list.
-- 3. With forget_after > 0, forgets the consumers (of instances that are gone) idle that long and
--    holding nothing.
-- needs: schedule_key, outbox_key, consumer, limit, stale_after, forget_after, GROUP, FIELD, now,
--   REASON, key_of_session, end_session
local due = redis.call('ZRANGEBYSCORE', schedule_key, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #due, 2 do
  local session_id, ends = due[i], tonumber(due[i + 1])
  local stored = redis.call('HMGET', key_of_session(session_id), FIELD.user_id, FIELD.device_id)
  if stored[1] then
    end_session(session_id, stored[1], stored[2], REASON.expired, ends)
  else
    redis.call('ZREM', schedule_key, session_id)
  end
end

if redis.call('EXISTS', outbox_key) == 0 then
  return {}
end
redis.pcall('XGROUP', 'CREATE', outbox_key, GROUP, '0')
if forget_after > 0 then
  for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', outbox_key, GROUP)) do
    local fields = {}
    for i = 1, #info, 2 do
      fields[info[i]] = info[i + 1]
    end
    if fields.name ~= consumer and fields.pending == 0 and fields.idle > forget_after then
      redis.call('XGROUP', 'DELCONSUMER', outbox_key, GROUP, fields.name)
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
  local read = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', limit,
    'STREAMS', outbox_key, id)
  return (read and read[1]) and read[1][2] or {}
end
add(read('0'))
add(redis.call('XAUTOCLAIM', outbox_key, GROUP, consumer, stale_after, '0-0', 'COUNT', limit)[2])
if #entries < limit then
  add(read('>'))
end
return entries
