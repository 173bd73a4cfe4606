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

