-- DeleteSession. ARGV[7]: the session id.
local session_id = ARGV[7]
local stored = redis.call('HMGET', KEYS[1], 'u', 'd', 'x')
if not stored[1] or not live(session_id, stored[1], stored[2], stored[3]) then
  return finish({s = 'not_found'})
end
end_session(session_id, stored[1], stored[2], 'deleted', now)
return finish({s = 'ok'})
