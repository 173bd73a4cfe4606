-- create.lua: CreateSession. Writes the new session's hash (the client's fields come as
-- field/value pairs from ARGV[fields_at]), its end on the schedule and its entry in the user's
-- index; one more than MAX_PER_USER evicts the user's oldest live sessions.
-- needs: session_key, index_key, session_id, user_id, fields_at, LIFETIME, IDLE, MAX_PER_USER,
--   TTL_MARGIN, FIELD, REASON, STATUS, schedule_key, time, now, live_device, end_session, finish
local expires = now + LIFETIME
local ends = expires
if IDLE > 0 then
  ends = math.min(expires, now + IDLE)
end

redis.call('HSET', session_key, FIELD.created_at, now, FIELD.updated_at, now,
  FIELD.last_seen_at, now, FIELD.expires_at, expires, FIELD.user_id, user_id,
  unpack(ARGV, fields_at))
-- The schedule ends the session (with its event); the TTLs are only a safety net behind it.
redis.call('ZADD', schedule_key, ends, session_id)
redis.call('PEXPIRE', session_key, LIFETIME + TTL_MARGIN)

-- Scores are creation times in microseconds, made strictly increasing per user so that the
-- index order is the creation order even for creates within one microsecond.
local score = tonumber(time[1]) * 1000000 + tonumber(time[2])
local newest = redis.call('ZRANGE', index_key, -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) >= score then
  score = tonumber(newest[2]) + 1
end
redis.call('ZADD', index_key, score, session_id)
redis.call('PEXPIRE', index_key, LIFETIME + TTL_MARGIN)

-- Sessions already past their end are ended as expired first and do not count toward the limit;
-- index entries without a session are dropped.
if MAX_PER_USER > 0 and redis.call('ZCARD', index_key) > MAX_PER_USER then
  local alive, devices = {}, {}
  for _, other in ipairs(redis.call('ZRANGE', index_key, 0, -1)) do
    local device_id = live_device(other, user_id)
    if device_id then
      alive[#alive + 1] = other
      devices[other] = device_id
    end
  end
  for i = 1, #alive - MAX_PER_USER do
    end_session(alive[i], user_id, devices[alive[i]], REASON.evicted, now)
  end
end

return finish({s = STATUS.ok, v = session_id})
