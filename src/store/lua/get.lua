-- GetSession. ARGV[7]: the session id. Returns the session's fields as a flat list.
local session_id = ARGV[7]
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then
  return finish({s = 'not_found'})
end
local stored = {}
for i = 1, #fields, 2 do
  stored[fields[i]] = fields[i + 1]
end
if not live(session_id, stored.u, stored.d, stored.x) then
  return finish({s = 'not_found'})
end
touch(session_id, tonumber(stored.x))
return finish({s = 'ok', v = fields})
