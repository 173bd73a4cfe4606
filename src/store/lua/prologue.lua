-- Start of every command script, followed by bucket.lua and live.lua. KEYS[1] is the script's main key, KEYS[2] the
-- idempotency record of the command (same hash slot). ARGV[1]: how long to keep the record in
-- seconds (0: no message_id, no record); ARGV[2]: the bucket's key base `<prefix>:{<bucket>}:`;
-- ARGV[3]: absolute lifetime (ms); ARGV[4]: idle timeout (ms, 0 = off); ARGV[5]: most sessions
-- per user (0 = no limit); ARGV[6]: safety margin of Redis TTLs past the schedule (ms).
-- A recorded command returns its first outcome unchanged; otherwise finish() records the
-- script's outcome in the same atomic step.
local record_key, record_ttl = KEYS[2], tonumber(ARGV[1])
if record_ttl > 0 then
  local recorded = redis.call('GET', record_key)
  if recorded then
    return recorded
  end
end

local base = ARGV[2]
local lifetime, idle = tonumber(ARGV[3]), tonumber(ARGV[4])
local max_per_user, margin = tonumber(ARGV[5]), tonumber(ARGV[6])
local function finish(outcome)
  local encoded = cjson.encode(outcome)
  if record_ttl > 0 then
    redis.call('SET', record_key, encoded, 'EX', record_ttl)
  end
  return encoded
end

