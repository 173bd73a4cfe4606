-- Ends the session as expired when its moment has passed; answers whether it is still live.
-- `expires` is the session's stored `x`. Without idle timeout that is its end (and its score on
-- the schedule), which spares a schedule lookup; with one, the schedule's score is its end. A
-- session without an end is live until its TTL.
local function live(session_id, user_id, device_id, expires)
  local ends = expires
  if idle > 0 then
    ends = redis.call('ZSCORE', schedule_key, session_id)
  end
  if ends and tonumber(ends) <= now then
    end_session(session_id, user_id, device_id, 'expired', tonumber(ends))
    return false
  end
  return true
end

-- The device id of a session on its user's index if it is live; nil if it is gone (its
-- leftover index and schedule entries are dropped) or past its end (ended now, as expired).
local function live_device(session_id, user_id)
  local stored = redis.call('HMGET', session_key(session_id), 'd', 'x')
  if not stored[1] then
    redis.call('ZREM', index_key(user_id), session_id)
    redis.call('ZREM', schedule_key, session_id)
    return nil
  end
  if live(session_id, user_id, stored[1], stored[2]) then
    return stored[1]
  end
  return nil
end

-- A read or update of a live session moves its idle deadline (never past its absolute end).
local function touch(session_id, expires)
  if idle > 0 then
    redis.call('ZADD', schedule_key, math.min(expires, now + idle), session_id)
  end
end

