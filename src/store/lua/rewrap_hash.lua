-- rewrap_hash.lua: writes re-sealed values into one session hash, each only where the hash still
-- holds the value it was made from (an instance may have written the field since). ARGV from
-- changes_at holds field code, old value, new value triples. Returns how many were written.
-- needs: session_key, changes_at
local written = 0
for i = changes_at, #ARGV, 3 do
  if redis.call('HGET', session_key, ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', session_key, ARGV[i], ARGV[i + 2])
    written = written + 1
  end
end
return written
