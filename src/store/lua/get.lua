-- GetSession: the session's fields as a flat field/value list.
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then
  return finish({s = 'not_found'})
end
return finish({s = 'ok', v = fields})
