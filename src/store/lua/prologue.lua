-- Shared start of every command script. KEYS[1] is the script's main key, KEYS[2] the
-- idempotency record of the command (same hash slot). ARGV[1]: how long to keep the record in
-- seconds (0: no message_id, no record); ARGV[2]: the bucket's key base `<prefix>:{<bucket>}:`;
-- ARGV[3]: absolute lifetime (ms); ARGV[4]: idle timeout (ms, 0 = off); ARGV[5]: most sessions
-- per user (0 = no limit); ARGV[6]: safety margin of Redis TTLs past the schedule (ms).
-- A recorded command returns its first outcome unchanged; otherwise finish() records the
-- script's outcome in the same atomic step.
local record_key, record_ttl = KEYS[2], tonumber(ARGV[1])
if record_ttl > 0 then
  local recorded = redis.call('GET', record_key)
  if recorded then
    return recorded
  end
end

local base = ARGV[2]
local lifetime, idle = tonumber(ARGV[3]), tonumber(ARGV[4])
local max_per_user, margin = tonumber(ARGV[5]), tonumber(ARGV[6])
local schedule_key, outbox_key = base .. 'exp', base .. 'outbox'

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local function session_key(session_id)
  return base .. 's:' .. session_id
end

local function index_key(user_id)
  return base .. 'u:' .. user_id
end

local function finish(outcome)
  local encoded = cjson.encode(outcome)
  if record_ttl > 0 then
    redis.call('SET', record_key, encoded, 'EX', record_ttl)
  end
  return encoded
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

-- Ends the session as expired when its moment has passed (the schedule's score is its end);
-- answers whether it is still live. A session without schedule entry is live until its TTL.
local function live(session_id, user_id, device_id)
  local ends = redis.call('ZSCORE', schedule_key, session_id)
  if ends and tonumber(ends) <= now then
    end_session(session_id, user_id, device_id, 'expired', tonumber(ends))
    return false
  end
  return true
end

-- A read or update of a live session moves its idle deadline (never past its absolute end).
local function touch(session_id, expires)
  if idle > 0 then
    redis.call('ZADD', schedule_key, math.min(expires, now + idle), session_id)
  end
end

