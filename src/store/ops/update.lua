-- update.lua: UpdateSession. The client may assert user_id, device_id, ip_address and
-- user_agent, which never change ('' when not given; another value than the stored one, or one
-- the session does not have, is a conflict). From ARGV[set_at]: the number n of field/value pairs to set and
-- the pairs; the number m of re-sealed values and m field/old/new triples; the fields to clear.
-- With a key set (sealed_prefix, the header of a value sealed under it, not ''), a secret field
-- that the update leaves and that is not sealed under that key makes the script answer `stale`
-- with those fields and values, writing nothing: the caller re-seals them and calls again with
-- them as triples, which are written only if the stored values are still the old ones, so that
-- the session is sealed whole. The record keeps no copy of the session: a repeat answers the
-- session as it is now (`repeated`), or not_found once it has ended, and writes nothing.
-- needs: session_key, session_id, asserted_user_id, asserted_device_id, asserted_ip_address,
--   asserted_user_agent, sealed_prefix, set_at,
--   FIELD, now, live, touch, finish, repeated, STATUS
local stored = redis.call('HMGET', session_key, FIELD.user_id, FIELD.device_id, FIELD.expires_at,
  FIELD.ip_address, FIELD.user_agent)
local is_live = stored[1] and live(session_id, stored[1], stored[2], stored[3])
if repeated then
  if not is_live then
    return cjson.encode({s = STATUS.not_found})
  end
  return cjson.encode({s = STATUS.ok, v = redis.call('HGETALL', session_key)})
end
if not is_live then
  return finish({s = STATUS.not_found})
end
if asserted_user_id ~= '' and asserted_user_id ~= stored[1] then
  return finish({s = STATUS.conflict, f = 'user_id'})
end
if asserted_device_id ~= '' and asserted_device_id ~= stored[2] then
  return finish({s = STATUS.conflict, f = 'device_id'})
end
if asserted_ip_address ~= '' and asserted_ip_address ~= stored[4] then
  return finish({s = STATUS.conflict, f = 'ip_address'})
end
if asserted_user_agent ~= '' and asserted_user_agent ~= stored[5] then
  return finish({s = STATUS.conflict, f = 'user_agent'})
end

local set_count = tonumber(ARGV[set_at])
local first, last = set_at + 1, set_at + 2 * set_count
local reseal_count = tonumber(ARGV[last + 1])
local reseal_first, reseal_last = last + 2, last + 1 + 3 * reseal_count
local written = {}
for i = first, last, 2 do
  written[ARGV[i]] = true
end
for i = reseal_last + 1, #ARGV do
  written[ARGV[i]] = true
end
if sealed_prefix ~= '' then
  local stale = {}
  for _, code in ipairs({FIELD.auth_code, FIELD.access_token, FIELD.refresh_token, FIELD.user_email}) do
    local value = redis.call('HGET', session_key, code)
    if value and not written[code] and string.sub(value, 1, #sealed_prefix) ~= sealed_prefix then
      local resealed = false
      for i = reseal_first, reseal_last, 3 do
        if ARGV[i] == code and ARGV[i + 1] == value then
          resealed = true
        end
      end
      if not resealed then
        stale[#stale + 1] = code
        stale[#stale + 1] = value
      end
    end
  end
  if #stale > 0 then
    return cjson.encode({s = STATUS.stale, v = stale})
  end
end

local changes = {}
for i = first, last do
  changes[#changes + 1] = ARGV[i]
end
for i = reseal_first, reseal_last, 3 do
  changes[#changes + 1] = ARGV[i]
  changes[#changes + 1] = ARGV[i + 2]
end
redis.call('HSET', session_key, FIELD.updated_at, now, FIELD.last_seen_at, now, unpack(changes))
for i = reseal_last + 1, #ARGV do
  redis.call('HDEL', session_key, ARGV[i])
end
touch(session_id, tonumber(stored[3]))
return finish({s = STATUS.ok, v = redis.call('HGETALL', session_key)}, {s = STATUS.ok, c = 1})
