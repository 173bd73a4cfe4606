-- list.lua: ListSessions, one page. Returns an array: the cursor score when more live sessions
-- may follow ('' when none), then for each of at most `limit` live sessions after score `after`
-- ('' for the oldest), oldest first: its id, device_id, ip_address, user_agent, created_at and
-- last_seen_at ('' for an absent one). Reads are not recorded (§7.4), so the array is the answer
-- as it is, with no document to encode. Entries of ended sessions are removed on the way. One
-- call reads at most 2 * limit + 16 index entries, so its work follows `limit`, not the user's
-- session count: a page cut short by that bound answers fewer sessions, with a cursor.
-- Index scores are unique per user (create.lua), so the cursor "before the first session not
-- answered" is that session's score less one.
-- needs: index_key, user_id, limit, after, FIELD, live_fields
local codes = {FIELD.ip_address, FIELD.user_agent, FIELD.created_at, FIELD.last_seen_at}
local budget = 2 * limit + 16
local listed, count = {''}, 0
local from = '-inf'
if after ~= '' then
  from = '(' .. after
end
local function before(score)
  return string.format('%d', tonumber(score) - 1)
end
while budget > 0 do
  local wanted = math.min(limit - count + 1, budget)
  local batch = redis.call('ZRANGE', index_key, from, '+inf', 'BYSCORE', 'LIMIT', 0, wanted)
  local last_kept = nil
  for i = 1, #batch do
    local stored = live_fields(batch[i], user_id, codes)
    if stored and count == limit then
      -- A live session follows the full page; the next page starts with it.
      listed[1] = before(redis.call('ZSCORE', index_key, batch[i]))
      return listed
    end
    budget = budget - 1
    if stored then
      last_kept = batch[i]
      listed[#listed + 1] = batch[i]
      listed[#listed + 1] = stored[1]
      for at = 3, 6 do
        listed[#listed + 1] = stored[at] or ''
      end
      count = count + 1
    end
  end
  if #batch < wanted then
    -- The index has no more entries.
    return listed
  end
  -- The ended entries of the batch have left the index and its live ones stay: the next batch
  -- starts after the last live one (still on the index, so it has a score), or where this one
  -- did if it had none, so that no read skips entries by an offset.
  if last_kept then
    from = '(' .. redis.call('ZSCORE', index_key, last_kept)
  end
end
-- The bound was reached: the next page starts with the first entry not looked at, if any.
local following = redis.call('ZRANGE', index_key, from, '+inf', 'BYSCORE', 'LIMIT', 0, 1,
  'WITHSCORES')
if following[2] then
  listed[1] = before(following[2])
end
return listed
