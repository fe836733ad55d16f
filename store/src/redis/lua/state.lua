-- One conversation as one user's device sees it, read atomically together with this node's clock.
-- KEYS: meta, members, cursors   ARGV: user, cursor field
-- Returns {now_us, kind, name, owner, head, epoch, chg, trim, member record or '', delivered}; kind 0
-- when the conversation does not exist. now_us lets Sync build tokens that cannot hide a later change.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local m = redis.call('HMGET', KEYS[1], 'kind', 'name', 'owner', 'head', 'epoch', 'chg', 'trim')
if not m[1] then return { now, 0, '', '', 0, '0', 0, 0, '', 0 } end
local member = redis.call('HGET', KEYS[2], ARGV[1]) or ''
local delivered = tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0')
return { now, tonumber(m[1]), m[2], m[3], tonumber(m[4]), m[5], tonumber(m[6] or '0'),
  tonumber(m[7] or '0'), member, delivered }
