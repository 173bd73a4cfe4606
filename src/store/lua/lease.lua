-- lease.lua: one round of the relays' bucket leases, in one hash (leases_key): field 'r:<owner>'
-- holds the moment (ms) a relay was last seen, field 'b:<bucket>' '<owner> <until ms>'. The
-- relay `owner` says it is alive, counts the relays seen within ttl ms (forgetting the others),
-- and keeps or takes leases up to its share (the buckets over the live relays, rounded up),
-- freeing those over its share; with release = 1 it frees all of its leases and leaves.
-- Answers the buckets it holds.
-- needs: leases_key, owner, ttl, buckets, release
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local fields = redis.call('HGETALL', leases_key)
local relays, leases = {}, {}
for i = 1, #fields, 2 do
  local field, value = fields[i], fields[i + 1]
  local kind, name = string.sub(field, 1, 2), string.sub(field, 3)
  if kind == 'r:' then
    if tonumber(value) + ttl < now then
      redis.call('HDEL', leases_key, field)
    else
      relays[name] = true
    end
  elseif kind == 'b:' then
    local holder, till = string.match(value, '^(.*) (%d+)$')
    if holder and tonumber(till) >= now then
      leases[tonumber(name)] = holder
    end
  end
end
if release == 1 then
  redis.call('HDEL', leases_key, 'r:' .. owner)
  for bucket = 0, buckets - 1 do
    if leases[bucket] == owner then
      redis.call('HDEL', leases_key, 'b:' .. bucket)
    end
  end
  return {}
end
redis.call('HSET', leases_key, 'r:' .. owner, now)
relays[owner] = true
local live = 0
for _ in pairs(relays) do
  live = live + 1
end
local share = math.ceil(buckets / live)
local held = {}
-- Its own leases first (kept up to the share), then free ones.
for _, own in ipairs({true, false}) do
  for bucket = 0, buckets - 1 do
    local mine = leases[bucket] == owner
    if mine == own and (mine or leases[bucket] == nil) then
      if #held < share then
        redis.call('HSET', leases_key, 'b:' .. bucket, owner .. ' ' .. (now + ttl))
        held[#held + 1] = bucket
      elseif mine then
        redis.call('HDEL', leases_key, 'b:' .. bucket)
      end
    end
  end
end
redis.call('PEXPIRE', leases_key, ttl * 10)
return held
