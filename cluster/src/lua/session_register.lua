-- Registers a session and removes the ones the login policy says it replaces, in one atomic step (a
-- non-atomic HSET + EXPIRE left Turms with sessions that never expired).
-- Logins of one device are ordered by when their node accepted them (`at`, ms since the Unix epoch),
-- not by when their registration reaches Redis: a node slowed down under load may register a login
-- the device already gave up on (no Welcome in time) after the device's next login on another node.
-- That late registration must lose, or it would close the live session with SESSION_REPLACED.
-- KEYS[1]  the user's session hash (device -> JSON entry)
-- ARGV     device, class, node, session, ttl_ms, policy (all | one-per-class | single), at_ms
--          (0: now, by Redis's clock)
-- Returns  'superseded' alone when a later login of the device is registered (nothing written), else
--          'ok' then the replaced entries as a flat list: device1, entry1, device2, entry2, ...
local device, class, node, session = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, policy = tonumber(ARGV[5]), ARGV[6]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = tonumber(ARGV[7] or '0')
if at == nil or at == 0 then at = now end

local current = redis.call('HGET', KEYS[1], device)
if current then
  local ok, e = pcall(cjson.decode, current)
  if ok and type(e) == 'table' and tonumber(e.exp) ~= nil and tonumber(e.exp) > now and
      tonumber(e.at) ~= nil and tonumber(e.at) > at then
    return { 'superseded' }
  end
end

local replaced = { 'ok' }
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
  cjson.encode({ node = node, session = session, class = class, exp = now + ttl, at = at }))
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return replaced
