-- DeleteUserSessions. KEYS[1]: the user's index. ARGV[2]: prefix of session keys in this
-- bucket. Returns the closing time (ms), then session id/device id pairs of the ended sessions.
local index_key, session_prefix = KEYS[1], ARGV[2]
local closed = {string.format('%d', now_ms())}
for _, session_id in ipairs(redis.call('ZRANGE', index_key, 0, -1)) do
  local session_key = session_prefix .. session_id
  local device_id = redis.call('HGET', session_key, 'd')
  if device_id then
    redis.call('DEL', session_key)
    closed[#closed + 1] = session_id
    closed[#closed + 1] = device_id
  end
end
redis.call('DEL', index_key)
return finish({s = 'ok', v = closed})
