-- DeleteUserSessions. KEYS[1]: the user's index; ARGV[7]: user_id. Returns the ids of the
-- sessions it ended.
local index, user_id = KEYS[1], ARGV[7]
local closed = {}
for _, session_id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  local device_id = redis.call('HGET', session_key(session_id), 'd')
  if device_id and live(session_id, user_id, device_id) then
    end_session(session_id, user_id, device_id, 'user_sessions_deleted', now)
    closed[#closed + 1] = session_id
  end
end
redis.call('DEL', index)
return finish({s = 'ok', v = closed})
