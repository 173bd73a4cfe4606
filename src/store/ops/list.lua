-- list.lua: ListSessions, one page. Returns the cursor score when more live sessions may follow
-- ('' when none), then for each of at most `limit` live sessions after score `after` ('' for the
-- oldest), oldest first: its id, device_id, ip_address, user_agent, created_at and last_seen_at
-- ('' for an absent one). Entries of ended sessions are removed on the way. One call reads at
-- most 2 * limit + 16 index entries, so its work follows `limit`, not the user's session count:
-- a page cut short by that bound answers fewer sessions, with a cursor.
-- needs: index_key, user_id, limit, after, FIELD, STATUS, live_fields, finish
local codes = {FIELD.ip_address, FIELD.user_agent, FIELD.created_at, FIELD.last_seen_at}
local budget = 2 * limit + 16
local listed, count, cursor = {''}, 0, nil
local from = '-inf'
if after ~= '' then
  from = '(' .. after
end
local more = false
while budget > 0 do
  local wanted = math.min(limit - count + 1, budget)
  local batch = redis.call('ZRANGE', index_key, from, '+inf', 'BYSCORE', 'LIMIT', 0, wanted,
    'WITHSCORES')
  for i = 1, #batch, 2 do
    local stored = live_fields(batch[i], user_id, codes)
    if stored and count == limit then
      -- A live session follows the full page; it stays for the next one.
      more = true
      break
    end
    budget = budget - 1
    cursor = batch[i + 1]
    from = '(' .. cursor
    if stored then
      listed[#listed + 1] = batch[i]
      listed[#listed + 1] = stored[1]
      for at = 3, 6 do
        listed[#listed + 1] = stored[at] or ''
      end
      count = count + 1
    end
  end
  -- Done when a live session was found after a full page, or the index has no more entries.
  if more or #batch < 2 * wanted then
    break
  end
end
if not more and budget == 0 then
  -- The bound was reached: entries may follow, ended or not looked at.
  more = #redis.call('ZRANGE', index_key, from, '+inf', 'BYSCORE', 'LIMIT', 0, 1) > 0
end
if more then
  listed[1] = cursor
end
return finish({s = STATUS.ok, v = listed})
