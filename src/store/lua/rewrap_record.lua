-- rewrap_record.lua: replaces a recorded outcome by its re-sealed form, keeping its TTL, only if
-- it is still the one the new form was made from. Returns 1 when written.
-- needs: record_key, old, new
if redis.call('GET', record_key) == old then
  redis.call('SET', record_key, new, 'KEEPTTL')
  return 1
end
return 0
