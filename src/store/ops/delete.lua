-- delete.lua: DeleteSession. Ends a live session with reason deleted; answers its user id.
-- needs: session_key, session_id, FIELD, REASON, STATUS, now, live, end_session, finish
local stored = redis.call('HMGET', session_key, FIELD.user_id, FIELD.device_id, FIELD.expires_at)
if not stored[1] or not live(session_id, stored[1], stored[2], stored[3]) then
  return finish({s = STATUS.not_found})
end
end_session(session_id, stored[1], stored[2], REASON.deleted, now)
return finish({s = STATUS.ok, v = stored[1]})
