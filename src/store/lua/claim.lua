-- claim.lua: an idempotency key belongs to the first command its caller used it with, whatever
-- session or user that command is about (contract §8.3). The claim (claim_key, in the caller's
-- namespace and the bucket of that and the key)
-- holds the digest of that command's fingerprint (see record.lua for `digests`); a command whose
-- digests do not include it answers 0 and must not be applied. A first use claims the key, a
-- repeat renews the claim; both answer 1. The command's own record, in its bucket, then makes it
-- apply at most once.
-- needs: claim_key, digests, ttl
local held = redis.call('GET', claim_key)
if held and not string.find(',' .. digests .. ',', ',' .. held .. ',', 1, true) then
  return 0
end
redis.call('SET', claim_key, held or string.match(digests, '^[^,]+'), 'EX', ttl)
return 1
