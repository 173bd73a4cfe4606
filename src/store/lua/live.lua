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

-- A read or update of a live session moves its idle deadline (never past its absolute end).
local function touch(session_id, expires)
  if idle > 0 then
    redis.call('ZADD', schedule_key, math.min(expires, now + idle), session_id)
  end
end

