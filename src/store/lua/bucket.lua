-- The keys of one bucket and the ending of a session, shared by the command scripts and the
-- tick. Expects `base`, the bucket's key base `<prefix>:{<bucket>}:`, to be defined before it.
local schedule_key, outbox_key = base .. 'exp', base .. 'outbox'

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local function session_key(session_id)
  return base .. 's:' .. session_id
end

local function index_key(user_id)
  return base .. 'u:' .. user_id
end

-- Ends a session: removes it from the store and writes its SessionClosed into the outbox, in
-- the same atomic step as the change that ended it.
local function end_session(session_id, user_id, device_id, reason, at)
  redis.call('DEL', session_key(session_id))
  redis.call('ZREM', index_key(user_id), session_id)
  redis.call('ZREM', schedule_key, session_id)
  redis.call('XADD', outbox_key, '*', 's', session_id, 'u', user_id, 'd', device_id,
    'r', reason, 't', string.format('%d', at))
end

