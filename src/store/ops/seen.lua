-- seen.lua: counts a read of a session as use (last_seen_at = Redis's now), unless the session
-- has ended since it was read (HSET on a missing key would make a hash of one field). Returns
-- the moment written, or 0 when the session is gone.
-- needs: session_key, FIELD
if redis.call('EXISTS', session_key) == 0 then
  return 0
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('HSET', session_key, FIELD.last_seen_at, now)
return now
