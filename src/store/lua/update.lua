-- UpdateSession. ARGV[7]: the session id, ARGV[8], ARGV[9]: user_id and device_id the client
-- asserts ('' when not given), ARGV[10]: number n of field/value pairs to set,
-- ARGV[11 .. 10+2n]: those pairs, ARGV[11+2n ..]: fields to clear.
local session, session_id = KEYS[1], ARGV[7]
local stored = redis.call('HMGET', session, 'u', 'd', 'x')
if not stored[1] or not live(session_id, stored[1], stored[2], stored[3]) then
  return finish({s = 'not_found'})
end
if ARGV[8] ~= '' and ARGV[8] ~= stored[1] then
  return finish({s = 'conflict', f = 'user_id'})
end
if ARGV[9] ~= '' and ARGV[9] ~= stored[2] then
  return finish({s = 'conflict', f = 'device_id'})
end

local set_count = tonumber(ARGV[10])
redis.call('HSET', session, 'm', now, unpack(ARGV, 11, 10 + 2 * set_count))
for i = 11 + 2 * set_count, #ARGV do
  redis.call('HDEL', session, ARGV[i])
end
touch(session_id, tonumber(stored[3]))
return finish({s = 'ok', v = redis.call('HGETALL', session)})
