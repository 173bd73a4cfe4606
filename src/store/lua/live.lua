-- live.lua: whether a session is live, ending it as expired when its moment has passed, and the
-- idle deadline that reads and updates move.
-- needs: IDLE, FIELD, REASON, schedule_key, now, key_of_session, key_of_index, end_session
-- provides: live, live_fields, live_device, touch

-- `expires` is the session's stored expires_at. Without idle timeout that is its end (and its
-- score on the schedule), which spares a schedule lookup; with one, the schedule's score is its
-- end. A session without an end is live until its TTL.
local function live(session_id, user_id, device_id, expires)
  local ends = expires
  if IDLE > 0 then
    ends = redis.call('ZSCORE', schedule_key, session_id)
  end
  if ends and tonumber(ends) <= now then
    end_session(session_id, user_id, device_id, REASON.expired, tonumber(ends))
    return false
  end
  return true
end

-- The device id, the expires_at and the values of `codes` of a session on its user's index if
-- it is live; nil if it is gone (its leftover index and schedule entries are dropped) or past its
-- end (ended now, as expired).
local function live_fields(session_id, user_id, codes)
  local stored = redis.call('HMGET', key_of_session(session_id), FIELD.device_id,
    FIELD.expires_at, unpack(codes))
  if not stored[1] then
    redis.call('ZREM', key_of_index(user_id), session_id)
    redis.call('ZREM', schedule_key, session_id)
    return nil
  end
  if live(session_id, user_id, stored[1], stored[2]) then
    return stored
  end
  return nil
end

-- The device id of a session on its user's index if it is live (see live_fields).
local function live_device(session_id, user_id)
  local stored = live_fields(session_id, user_id, {})
  return stored and stored[1]
end

-- A read or update of a live session moves its idle deadline (never past its absolute end).
local function touch(session_id, expires)
  if IDLE > 0 then
    redis.call('ZADD', schedule_key, math.min(expires, now + IDLE), session_id)
  end
end
