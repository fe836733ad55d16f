-- Removes every session of one user that a (dead or departing) node held, so that its devices can log
-- in anywhere at once instead of waiting for the entries to expire.
-- KEYS[1]  the user's session hash
-- ARGV     node
-- Returns  the number of entries removed
local removed = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local ok, e = pcall(cjson.decode, entries[i + 1])
  if not ok or type(e) ~= 'table' or e.node == ARGV[1] then
    redis.call('HDEL', KEYS[1], entries[i])
    removed = removed + 1
  end
end
return removed
