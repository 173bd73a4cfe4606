-- delete_user.lua: DeleteUserSessions, in steps of at most `step` sessions so that no step blocks
-- Redis for long. Every step is atomic: each session leaves the store, its user's index and the
-- schedule, and its event enters the outbox, together. The command ends the sessions created
-- before it began (index scores up to the cutoff), not those created while it runs, and never the
-- kept session `kept_id` (kept_key is its hash; both '' and the index key when none is kept),
-- which must be a live session of the user when the command begins, or nothing is closed. Its
-- progress (progress_key, kept progress_ttl seconds) holds the cutoff score and then the ids ended
-- so far. A step that leaves sessions to end returns 'more'; the caller calls again with the same
-- keys (a redelivered command resumes from the progress). The last step returns the ids of all
-- the sessions it ended.
-- needs: index_key, progress_key, kept_key, user_id, kept_id, step, progress_ttl, now, FIELD,
--   live, live_device, end_session, finish, REASON, STATUS
local cutoff = redis.call('LINDEX', progress_key, 0)
local started = cutoff ~= false
if not started then
  if kept_id ~= '' then
    local kept = redis.call('HMGET', kept_key, FIELD.user_id, FIELD.device_id, FIELD.expires_at)
    if kept[1] ~= user_id or not live(kept_id, kept[1], kept[2], kept[3]) then
      return finish({s = STATUS.not_found})
    end
  end
  local newest = redis.call('ZRANGE', index_key, -1, -1, 'WITHSCORES')
  cutoff = newest[2] or '-inf'
end

local closed = {}
local ids = redis.call('ZRANGE', index_key, '-inf', cutoff, 'BYSCORE', 'LIMIT', 0, step + 2)
local taken = 0
local left = false
for i = 1, #ids do
  local session_id = ids[i]
  if session_id ~= kept_id then
    if taken == step then
      left = true
      break
    end
    taken = taken + 1
    local device_id = live_device(session_id, user_id)
    if device_id then
      end_session(session_id, user_id, device_id, REASON.user_sessions_deleted, now)
      closed[#closed + 1] = session_id
    end
  end
end

if left then
  if not started then
    redis.call('RPUSH', progress_key, cutoff)
  end
  if #closed > 0 then
    redis.call('RPUSH', progress_key, unpack(closed))
  end
  redis.call('EXPIRE', progress_key, progress_ttl)
  return STATUS.more
end

if started then
  local earlier = redis.call('LRANGE', progress_key, 1, -1)
  redis.call('DEL', progress_key)
  for _, session_id in ipairs(closed) do
    earlier[#earlier + 1] = session_id
  end
  closed = earlier
end
return finish({s = STATUS.ok, v = closed})
