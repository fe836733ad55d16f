-- Removes a session that ended, unless a newer session of the device replaced it meanwhile.
-- KEYS[1]  the user's session hash
-- ARGV     device, node, session
-- Returns  1 if removed, 0 if it was not there (replaced or already gone)
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then
  return 0
end
local ok, e = pcall(cjson.decode, current)
if ok and type(e) == 'table' and e.node == ARGV[2] and e.session == ARGV[3] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
