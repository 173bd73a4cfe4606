-- Removes published outbox entries: acknowledged and deleted in one step, so that no entry is
-- left acknowledged but undeleted. KEYS[1]: the bucket's outbox; ARGV: entry ids.
redis.call('XACK', KEYS[1], 'relay', unpack(ARGV))
return redis.call('XDEL', KEYS[1], unpack(ARGV))
