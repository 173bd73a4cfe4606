-- DeleteUserSessions, in steps of at most ARGV[8] sessions so that no step blocks Redis for
-- long. KEYS[1]: the user's index; KEYS[3]: the command's progress, a list holding the cutoff
-- score and then the ids ended so far (kept ARGV[9] seconds); ARGV[7]: user_id.
-- Every step is atomic: each session leaves the store, its user's index and the schedule, and
-- its event enters the outbox, together. The command ends the sessions created before it began
-- (index scores up to the cutoff), not those created while it runs. A step that leaves sessions
-- to end returns 'more'; the caller calls again with the same keys (a redelivered command
-- resumes from the progress). The last step returns the ids of all the sessions it ended.
local index, progress, user_id = KEYS[1], KEYS[3], ARGV[7]
local step, progress_ttl = tonumber(ARGV[8]), tonumber(ARGV[9])

local cutoff = redis.call('LINDEX', progress, 0)
local started = cutoff ~= false
if not started then
  local newest = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  cutoff = newest[2] or '-inf'
end

local closed = {}
local ids = redis.call('ZRANGE', index, '-inf', cutoff, 'BYSCORE', 'LIMIT', 0, step + 1)
for i = 1, math.min(#ids, step) do
  local session_id = ids[i]
  local device_id = live_device(session_id, user_id)
  if device_id then
    end_session(session_id, user_id, device_id, 'user_sessions_deleted', now)
    closed[#closed + 1] = session_id
  end
end

if #ids > step then
  if not started then
    redis.call('RPUSH', progress, cutoff)
  end
  if #closed > 0 then
    redis.call('RPUSH', progress, unpack(closed))
  end
  redis.call('EXPIRE', progress, progress_ttl)
  return 'more'
end

if started then
  local earlier = redis.call('LRANGE', progress, 1, -1)
  redis.call('DEL', progress)
  for _, session_id in ipairs(closed) do
    earlier[#earlier + 1] = session_id
  end
  closed = earlier
end
return finish({s = 'ok', v = closed})
