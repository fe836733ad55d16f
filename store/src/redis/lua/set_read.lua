-- Moves a user's read cursor forward, clamped to what they may read.
-- KEYS: meta, members   ARGV: user, seq
-- Returns {0, read} or {-1} (no such conversation), {-2, reason} (not a member).
local meta, members = KEYS[1], KEYS[2]
local head = redis.call('HGET', meta, 'head')
if not head then return { -1 } end
local member = parse_member(redis.call('HGET', members, ARGV[1]))
if not member then return { -2, 'not a member' } end
local visible = tonumber(head)
if member.left ~= 0 and member.left < visible then visible = member.left end
local wanted = tonumber(ARGV[2])
if wanted > visible then wanted = visible end
if wanted > member.read then
  member.read = wanted
  member.chg = next_stamp(meta)
  redis.call('HSET', members, ARGV[1], fmt_member(member))
end
return { 0, member.read }
