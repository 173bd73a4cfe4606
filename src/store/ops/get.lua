-- get.lua: GetSession, when the store cannot read the hash alone (an idle deadline to move, or
-- a session near its end). Returns the session's fields as a flat field/value list. A read is
-- never recorded: record_ttl is 0.
-- needs: session_key, session_id, FIELD, STATUS, live, touch, finish
local fields = redis.call('HGETALL', session_key)
if #fields == 0 then
  return finish({s = STATUS.not_found})
end
local stored = {}
for i = 1, #fields, 2 do
  stored[fields[i]] = fields[i + 1]
end
local expires = stored[FIELD.expires_at]
if not live(session_id, stored[FIELD.user_id], stored[FIELD.device_id], expires) then
  return finish({s = STATUS.not_found})
end
touch(session_id, tonumber(expires))
return finish({s = STATUS.ok, v = fields})
