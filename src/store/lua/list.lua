-- ListSessions. KEYS[1]: the user's index; ARGV[7]: user_id. Returns session id/device id
-- pairs of the live sessions, oldest first; entries of ended sessions are removed.
local index, user_id = KEYS[1], ARGV[7]
local listed = {}
for _, session_id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
  local device_id = live_device(session_id, user_id)
  if device_id then
    listed[#listed + 1] = session_id
    listed[#listed + 1] = device_id
  end
end
return finish({s = 'ok', v = listed})
