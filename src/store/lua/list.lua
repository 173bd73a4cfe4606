-- ListSessions. KEYS[1]: the user's index. ARGV[2]: prefix of session keys in this bucket.
-- Returns session id/device id pairs, oldest first; entries of ended sessions are removed.
local index_key, session_prefix = KEYS[1], ARGV[2]
local listed = {}
for _, session_id in ipairs(redis.call('ZRANGE', index_key, 0, -1)) do
  local device_id = redis.call('HGET', session_prefix .. session_id, 'd')
  if device_id then
    listed[#listed + 1] = session_id
    listed[#listed + 1] = device_id
  else
    redis.call('ZREM', index_key, session_id)
  end
end
return finish({s = 'ok', v = listed})
