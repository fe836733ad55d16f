-- Extends a live session's expiry (on heartbeats). If Redis lost the entry (restart without data, FLUSHALL,
-- or a peer released it believing this node dead) it is written again, unless a live session that the
-- policy would let replace it is there now: then this session is the older one and must go.
-- KEYS[1]  the user's session hash
-- Only a session that logged in later (`login`, Unix ms) replaces this one: an entry written by an older
-- login (a register that Redis applied late) is taken back.
-- ARGV     device, class, node, session, ttl_ms, policy, login_ms
-- Returns  'refreshed', 'restored' or 'replaced'
local device, class, node, session = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, policy, login = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]) or 0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- A live entry of a session that logged in later than this one, or nil.
local function newer(raw)
  local ok, e = pcall(cjson.decode, raw)
  if ok and type(e) == 'table' and tonumber(e.exp) ~= nil and tonumber(e.exp) > now
      and (tonumber(e.login) or 0) > login then
    return e
  end
  return nil
end

local result = 'restored'
local current = redis.call('HGET', KEYS[1], device)
if current then
  local ok, e = pcall(cjson.decode, current)
  if ok and type(e) == 'table' and e.node == node and e.session == session
      and tonumber(e.exp) ~= nil and tonumber(e.exp) > now then
    result = 'refreshed'
  elseif newer(current) then
    return 'replaced'
  end
end
if result == 'restored' then
  local entries = redis.call('HGETALL', KEYS[1])
  for i = 1, #entries, 2 do
    local e = newer(entries[i + 1])
    if e and entries[i] ~= device and
        (policy == 'single' or (policy == 'one-per-class' and e.class == class)) then
      return 'replaced'
    end
  end
end
redis.call('HSET', KEYS[1], device,
  cjson.encode({ node = node, session = session, class = class, exp = now + ttl, login = login }))
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return result
