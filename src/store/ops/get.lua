-- get.lua: GetSession, when the store cannot read the hash alone (an idle deadline to move, or
-- a session near its end). Returns the session's fields as a flat field/value list. A read is
-- never recorded: record_ttl is 0.
-- needs: session_key, session_id, FIELD, STATUS, SEEN_EVERY, now, live, touch, finish
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
-- A read counts as use at most once a minute (SEEN_EVERY ms), so that reads stay cheap.
local seen = tonumber(stored[FIELD.last_seen_at] or 0)
if now - seen >= SEEN_EVERY then
  redis.call('HSET', session_key, FIELD.last_seen_at, now)
  fields = redis.call('HGETALL', session_key)
end
return finish({s = STATUS.ok, v = fields})
