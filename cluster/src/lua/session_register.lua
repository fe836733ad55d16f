-- Registers a session and removes the ones the login policy says it replaces, in one atomic step (a
-- non-atomic HSET + EXPIRE left Turms with sessions that never expired).
-- KEYS[1]  the user's session hash (device -> JSON entry)
-- A login never replaces one that reached its node later (`login`, Unix ms): a register delayed by a slow
-- Redis must not evict the session its client opened meanwhile elsewhere; it is 'superseded' instead.
-- ARGV     device, class, node, session, ttl_ms, policy (all | one-per-class | single), login_ms
-- Returns  the replaced entries as a flat list: device1, entry1, device2, entry2, ...; or {'superseded'}
local device, class, node, session = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, policy, login = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]) or 0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function conflicts(dev, e)
  return dev == device or policy == 'single' or (policy == 'one-per-class' and e.class == class)
end

local live = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local dev, raw = entries[i], entries[i + 1]
  local ok, e = pcall(cjson.decode, raw)
  if not ok or type(e) ~= 'table' or tonumber(e.exp) == nil or tonumber(e.exp) <= now then
    redis.call('HDEL', KEYS[1], dev) -- expired or unreadable: prune
  elseif conflicts(dev, e) then
    if (tonumber(e.login) or 0) > login then
      return { 'superseded' }
    end
    live[#live + 1] = { dev, raw }
  end
end
local replaced = {}
for _, pair in ipairs(live) do
  redis.call('HDEL', KEYS[1], pair[1])
  replaced[#replaced + 1] = pair[1]
  replaced[#replaced + 1] = pair[2]
end
redis.call('HSET', KEYS[1], device,
  cjson.encode({ node = node, session = session, class = class, exp = now + ttl, login = login }))
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return replaced
