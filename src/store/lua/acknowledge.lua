-- acknowledge.lua: removes published outbox entries, acknowledged and deleted in one step, so
-- that no entry is left acknowledged but undeleted.
-- needs: outbox_key, GROUP, ids_at
redis.call('XACK', outbox_key, GROUP, unpack(ARGV, ids_at))
return redis.call('XDEL', outbox_key, unpack(ARGV, ids_at))
