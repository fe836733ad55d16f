-- Drops a node's lease if `instance` still holds it (or unconditionally when instance is empty: the
-- node was found dead).
-- KEYS[1]  the node's lease hash
-- ARGV     instance ('' = any)
-- Returns  1 if dropped
local holder = redis.call('HGET', KEYS[1], 'instance')
if holder and (ARGV[1] == '' or holder == ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
