-- CreateSession. KEYS[3]: the user's index (sorted set of session ids by creation).
-- ARGV[2]: prefix of session keys in this bucket, ARGV[3]: the new session id,
-- ARGV[4]: lifetime in ms, ARGV[5..]: field/value pairs of the session.
local session_key, index_key = KEYS[1], KEYS[3]
local session_prefix, session_id, lifetime = ARGV[2], ARGV[3], tonumber(ARGV[4])

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expires = now + lifetime

redis.call('HSET', session_key, 'c', now, 'm', now, 'x', expires, unpack(ARGV, 5))
redis.call('PEXPIRE', session_key, lifetime)

-- Scores are creation times in microseconds, made strictly increasing per user so that the
-- index order is the creation order even for creates within one microsecond.
local score = tonumber(time[1]) * 1000000 + tonumber(time[2])
local newest = redis.call('ZRANGE', index_key, -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) >= score then
  score = tonumber(newest[2]) + 1
end
redis.call('ZADD', index_key, score, session_id)
if redis.call('PTTL', index_key) < lifetime then
  redis.call('PEXPIRE', index_key, lifetime)
end

-- Drop index entries of sessions that have already ended (oldest first, a few per create).
for _, old in ipairs(redis.call('ZRANGE', index_key, 0, 2)) do
  if redis.call('EXISTS', session_prefix .. old) == 1 then
    break
  end
  redis.call('ZREM', index_key, old)
end

return finish({s = 'ok', v = session_id})
