-- list.lua: ListSessions, one page. Returns the score of the last session answered when more
-- entries follow ('' when none), then for each of at most `limit` live sessions after score
-- `after` ('' for the oldest), oldest first: its id, device_id, ip_address, user_agent,
-- created_at and last_seen_at ('' for an absent one); entries of ended sessions are removed on
-- the way. It reads the index `limit` + 1 entries at a time, so its work grows with `limit`, not
-- with the user's session count (an entry left behind by a session that ended costs one more).
-- needs: index_key, user_id, limit, after, FIELD, STATUS, live_fields, finish
local listed, count, last = {''}, 0, nil
local from = '-inf'
if after ~= '' then
  from = '(' .. after
end
local more = false
while true do
  local wanted = limit - count + 1
  local batch = redis.call('ZRANGE', index_key, from, '+inf', 'BYSCORE', 'LIMIT', 0, wanted,
    'WITHSCORES')
  for i = 1, #batch, 2 do
    if count == limit then
      more = true
      break
    end
    local stored = live_fields(batch[i], user_id,
      {FIELD.ip_address, FIELD.user_agent, FIELD.created_at, FIELD.last_seen_at})
    if stored then
      listed[#listed + 1] = batch[i]
      listed[#listed + 1] = stored[1]
      for at = 3, 6 do
        listed[#listed + 1] = stored[at] or ''
      end
      count = count + 1
      last = batch[i + 1]
    end
    from = '(' .. batch[i + 1]
  end
  -- Done when the page is full, or the index had fewer entries than asked for.
  if more or count == limit or #batch < 2 * wanted then
    break
  end
end
if more and last then
  listed[1] = last
end
return finish({s = STATUS.ok, v = listed})
