-- CreateSession. KEYS[1]: the new session, KEYS[3]: the user's index (sorted set of session ids
-- by creation). ARGV[7]: the new session id, ARGV[8]: user_id, ARGV[9..]: field/value pairs.
local session, index = KEYS[1], KEYS[3]
local session_id, user_id = ARGV[7], ARGV[8]
local expires = now + lifetime
local ends = expires
if idle > 0 then
  ends = math.min(expires, now + idle)
end

redis.call('HSET', session, 'c', now, 'm', now, 'x', expires, 'u', user_id, unpack(ARGV, 9))
-- The schedule ends the session (with its event); the TTLs are only a safety net behind it.
redis.call('ZADD', schedule_key, ends, session_id)
redis.call('PEXPIRE', session, lifetime + margin)

-- Scores are creation times in microseconds, made strictly increasing per user so that the
-- index order is the creation order even for creates within one microsecond.
local score = tonumber(time[1]) * 1000000 + tonumber(time[2])
local newest = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) >= score then
  score = tonumber(newest[2]) + 1
end
redis.call('ZADD', index, score, session_id)
redis.call('PEXPIRE', index, lifetime + margin)

-- One more than the limit ends the user's oldest live sessions. Sessions already past their end
-- are ended as expired first and do not count; entries without a session are dropped.
if max_per_user > 0 and redis.call('ZCARD', index) > max_per_user then
  local alive, devices = {}, {}
  for _, other in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local device_id = live_device(other, user_id)
    if device_id then
      alive[#alive + 1] = other
      devices[other] = device_id
    end
  end
  for i = 1, #alive - max_per_user do
    end_session(alive[i], user_id, devices[alive[i]], 'evicted', now)
  end
end

return finish({s = 'ok', v = session_id})
