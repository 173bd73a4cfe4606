-- seen.lua: counts a read of a session as use (last_seen_at = Redis's now) unless another read
-- marked it less than SEEN_EVERY ms ago, and unless the session has ended since it was read
-- (HSET on a missing key would make a hash of one field). Returns the session's last_seen_at
-- after the call, or 0 when the session is gone.
-- needs: session_key, FIELD, SEEN_EVERY
if redis.call('EXISTS', session_key) == 0 then
  return 0
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local seen = tonumber(redis.call('HGET', session_key, FIELD.last_seen_at) or 0)
if now - seen < SEEN_EVERY then
  return seen
end
redis.call('HSET', session_key, FIELD.last_seen_at, now)
return now
