-- bucket.lua: Redis's clock, the keys a script derives inside its bucket, and the end of a
-- session, shared by the command scripts and the tick.
-- needs: base, schedule_key, outbox_key, KIND, EVENT
-- provides: time, now, key_of_session, key_of_index, end_session
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local function key_of_session(session_id)
  return base .. KIND.session .. session_id
end

local function key_of_index(user_id)
  return base .. KIND.index .. user_id
end

-- Ends a session: removes it from the store and writes its SessionClosed into the outbox, in
-- the same atomic step as the change that ended it.
local function end_session(session_id, user_id, device_id, reason, at)
  redis.call('DEL', key_of_session(session_id))
  redis.call('ZREM', key_of_index(user_id), session_id)
  redis.call('ZREM', schedule_key, session_id)
  redis.call('XADD', outbox_key, '*', EVENT.session_id, session_id, EVENT.user_id, user_id,
    EVENT.device_id, device_id, EVENT.reason, reason, EVENT.closed_at, string.format('%d', at))
end
