-- A membership change and its system message, atomically.
-- KEYS: meta, msgs, members
-- ARGV: op ('create' | 'add' | 'remove'), actor, encoded system message (seq 0), retention
--       ('keep:max_age_ms:now_ms', see parse_retention), epoch for a new
--       group, then: create → name, users...; add/remove → user
-- Returns {0, seq, epoch} or {-1} (no such conversation), {-2, reason} (forbidden), {-3, reason} (invalid).
local meta, msgs, members = KEYS[1], KEYS[2], KEYS[3]
local op, actor, body = ARGV[1], ARGV[2], ARGV[3]
local retention = parse_retention(ARGV[4])

if op == 'create' then
  if redis.call('EXISTS', meta) == 1 then return { -3, 'conversation already exists' } end
  create_meta(meta, msgs, members, 2, ARGV[6], actor, ARGV[5])
  local seq, stamp = push_message(meta, msgs, body, retention)
  for i = 7, #ARGV do
    redis.call('HSET', members, ARGV[i], fmt_member({ first = 1, left = 0, read = 0, chg = stamp }))
  end
  return { 0, seq, ARGV[5] }
end

local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then return { -1 } end
if redis.call('HGET', meta, 'kind') ~= '2' then return { -2, 'not a group' } end
local owner = redis.call('HGET', meta, 'owner')
local user = ARGV[6]
local member = parse_member(redis.call('HGET', members, user))
local current = member and member.left == 0

if op == 'add' then
  if owner == '' or owner ~= actor then return { -2, 'only the owner may add' } end
  if current then return { -3, 'already a member' } end
  local seq, stamp = push_message(meta, msgs, body, retention)
  -- A re-added user starts over at the ADDED message; their read cursor sits just below it, so unread
  -- counts only what they can read (FERRY-READ-3).
  redis.call('HSET', members, user, fmt_member({ first = seq, left = 0, read = seq - 1, chg = stamp }))
  return { 0, seq, epoch }
elseif op == 'remove' then
  if actor ~= user and (owner == '' or owner ~= actor) then
    return { -2, 'only the owner may remove others' }
  end
  if not current then return { -3, 'not a member' } end
  local seq, stamp = push_message(meta, msgs, body, retention)
  member.left = seq
  member.chg = stamp
  redis.call('HSET', members, user, fmt_member(member))
  if owner == user then redis.call('HSET', meta, 'owner', '') end
  return { 0, seq, epoch }
end
return redis.error_reply('ERR unknown membership op')
