-- list.lua: ListSessions. Returns session id/device id pairs of the user's live sessions, oldest
-- first; entries of ended sessions are removed on the way.
-- needs: index_key, user_id, STATUS, live_device, finish
local listed = {}
for _, session_id in ipairs(redis.call('ZRANGE', index_key, 0, -1)) do
  local device_id = live_device(session_id, user_id)
  if device_id then
    listed[#listed + 1] = session_id
    listed[#listed + 1] = device_id
  end
end
return finish({s = STATUS.ok, v = listed})
