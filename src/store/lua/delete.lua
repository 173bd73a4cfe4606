-- DeleteSession. ARGV[2]: prefix of user index keys in this bucket, ARGV[3]: the session id.
-- Returns user_id, device_id and the closing time (ms) of the ended session.
local session_key = KEYS[1]
local stored = redis.call('HMGET', session_key, 'u', 'd')
if not stored[1] then
  return finish({s = 'not_found'})
end
redis.call('DEL', session_key)
redis.call('ZREM', ARGV[2] .. stored[1], ARGV[3])
return finish({s = 'ok', v = {stored[1], stored[2], string.format('%d', now_ms())}})
