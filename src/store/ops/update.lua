-- update.lua: UpdateSession. The client may assert user_id and device_id ('' when not given;
-- another value is a conflict); ARGV[set_at] is the number n of field/value pairs to set, which
-- follow it, and the fields to clear come after them.
-- needs: session_key, session_id, asserted_user_id, asserted_device_id, set_at, FIELD, now, live,
--   touch, finish, STATUS
local stored = redis.call('HMGET', session_key, FIELD.user_id, FIELD.device_id, FIELD.expires_at)
if not stored[1] or not live(session_id, stored[1], stored[2], stored[3]) then
  return finish({s = STATUS.not_found})
end
if asserted_user_id ~= '' and asserted_user_id ~= stored[1] then
  return finish({s = STATUS.conflict, f = 'user_id'})
end
if asserted_device_id ~= '' and asserted_device_id ~= stored[2] then
  return finish({s = STATUS.conflict, f = 'device_id'})
end

local set_count = tonumber(ARGV[set_at])
local first, last = set_at + 1, set_at + 2 * set_count
redis.call('HSET', session_key, FIELD.updated_at, now, unpack(ARGV, first, last))
for i = last + 1, #ARGV do
  redis.call('HDEL', session_key, ARGV[i])
end
touch(session_id, tonumber(stored[3]))
return finish({s = STATUS.ok, v = redis.call('HGETALL', session_key)})
