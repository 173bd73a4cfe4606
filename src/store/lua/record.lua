-- record.lua: at most once in effect per idempotency key, and only for the command the key was
-- first used with (contract §8.3; claim.lua, called before, refuses the key used for a command
-- about another session or user). The record holds the outcome the first run answered and `d`,
-- the digest of the command's fingerprint (command and caller); `digests` are those of this
-- command, comma-separated, under each key of the ring (the first is the one to record), so that
-- a record written under an older key still matches. A repeat whose digest matches answers the
-- recorded outcome and changes nothing; one whose digest does not match answers `reused`. A record
-- marked `c` answers the current state instead (an update keeps no copy of its session): the
-- script sees `repeated` and answers without writing. A record without `d` was written before
-- records had digests: it matches any command.
-- A repeat renews the record's time to live: a write, so that a WAIT after it (on whichever
-- connection) covers the record, and with it the first run's change, replicated before it.
-- needs: record_key, record_ttl, digests, STATUS
-- provides: finish, repeated
local repeated = false
if record_ttl > 0 then
  local recorded = redis.call('GET', record_key)
  if recorded then
    local first = cjson.decode(recorded)
    if first.d and not string.find(',' .. digests .. ',', ',' .. first.d .. ',', 1, true) then
      return cjson.encode({s = STATUS.reused})
    end
    redis.call('EXPIRE', record_key, record_ttl)
    if not first.c then
      return recorded
    end
    repeated = true
  end
end

-- Answers `outcome`, recording it, or `kept` in its place when given (what a repeat needs of
-- it), with the digest.
local function finish(outcome, kept)
  local encoded = cjson.encode(outcome)
  if record_ttl > 0 then
    local record = kept or outcome
    record.d = string.match(digests, '^[^,]+')
    redis.call('SET', record_key, cjson.encode(record), 'EX', record_ttl)
  end
  return encoded
end
