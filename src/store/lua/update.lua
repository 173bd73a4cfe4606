-- UpdateSession. ARGV[2], ARGV[3]: user_id and device_id the client asserts ('' when not
-- given), ARGV[4]: number n of field/value pairs to set, ARGV[5 .. 4+2n]: those pairs,
-- ARGV[5+2n ..]: fields to clear.
local session_key = KEYS[1]
local stored = redis.call('HMGET', session_key, 'u', 'd')
if not stored[1] then
  return finish({s = 'not_found'})
end
if ARGV[2] ~= '' and ARGV[2] ~= stored[1] then
  return finish({s = 'conflict', f = 'user_id'})
end
if ARGV[3] ~= '' and ARGV[3] ~= stored[2] then
  return finish({s = 'conflict', f = 'device_id'})
end

local set_count = tonumber(ARGV[4])
redis.call('HSET', session_key, 'm', now_ms(), unpack(ARGV, 5, 4 + 2 * set_count))
for i = 5 + 2 * set_count, #ARGV do
  redis.call('HDEL', session_key, ARGV[i])
end
return finish({s = 'ok', v = redis.call('HGETALL', session_key)})
