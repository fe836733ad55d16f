-- Registers a session and removes the ones the login policy says it replaces, in one atomic step (a
-- non-atomic HSET + EXPIRE left Turms with sessions that never expired).
-- KEYS[1]  the user's session hash (device -> JSON entry)
-- ARGV     device, class, node, session, ttl_ms, policy (all | one-per-class | single)
-- Returns  the replaced entries as a flat list: device1, entry1, device2, entry2, ...
local device, class, node, session = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, policy = tonumber(ARGV[5]), ARGV[6]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local replaced = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local dev, raw = entries[i], entries[i + 1]
  local ok, e = pcall(cjson.decode, raw)
  if not ok or type(e) ~= 'table' or tonumber(e.exp) == nil or tonumber(e.exp) <= now then
    redis.call('HDEL', KEYS[1], dev) -- expired or unreadable: prune
  elseif dev == device or policy == 'single' or (policy == 'one-per-class' and e.class == class) then
    redis.call('HDEL', KEYS[1], dev)
    replaced[#replaced + 1] = dev
    replaced[#replaced + 1] = raw
  end
end
redis.call('HSET', KEYS[1], device,
  cjson.encode({ node = node, session = session, class = class, exp = now + ttl }))
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return replaced
