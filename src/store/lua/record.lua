-- record.lua: exactly once in effect per message_id. A command repeated with the same message_id
-- answers with the outcome its first run recorded, and changes nothing; otherwise finish()
-- encodes the script's outcome and records it, in the same atomic step as the change.
-- A repeat renews the record's time to live: a write, so that a WAIT after it (on whichever
-- connection) covers the record, and with it the first run's change, replicated before it.
-- needs: record_key, record_ttl
-- provides: finish
if record_ttl > 0 then
  local recorded = redis.call('GET', record_key)
  if recorded then
    redis.call('EXPIRE', record_key, record_ttl)
    return recorded
  end
end

local function finish(outcome)
  local encoded = cjson.encode(outcome)
  if record_ttl > 0 then
    redis.call('SET', record_key, encoded, 'EX', record_ttl)
  end
  return encoded
end
