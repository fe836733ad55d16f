-- Takes or renews a node's lease. A lease held by another instance (another process with the same node
-- id) is never overwritten: that is the start-up conflict.
-- KEYS[1]  the node's lease hash
-- ARGV     instance, ttl_ms, quic, http, started_ms
-- Returns  'claimed' (was absent), 'renewed' (ours) or 'held:<instance>' (someone else's)
local holder = redis.call('HGET', KEYS[1], 'instance')
local result = 'claimed'
if holder then
  if holder ~= ARGV[1] then
    return 'held:' .. holder
  end
  result = 'renewed'
end
redis.call('HSET', KEYS[1], 'instance', ARGV[1], 'quic', ARGV[3], 'http', ARGV[4], 'started_ms', ARGV[5])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return result
