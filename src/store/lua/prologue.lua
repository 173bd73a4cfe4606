-- Shared start of every script. KEYS[1] is the script's main key, KEYS[2] the idempotency
-- record of the command (a key in the same hash slot); ARGV[1] is how long to keep the record
-- in seconds, 0 for a command without message_id. A recorded command returns its first outcome
-- unchanged; otherwise the script's outcome is recorded by finish() in the same atomic step.
local record_key, record_ttl = KEYS[2], tonumber(ARGV[1])
if record_ttl > 0 then
  local recorded = redis.call('GET', record_key)
  if recorded then
    return recorded
  end
end

local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local function finish(outcome)
  local encoded = cjson.encode(outcome)
  if record_ttl > 0 then
    redis.call('SET', record_key, encoded, 'EX', record_ttl)
  end
  return encoded
end

