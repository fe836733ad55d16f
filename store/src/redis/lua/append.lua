-- One user message: dedupe lookup, seq increment, append, dedupe record, head/stamp update — atomic.
-- KEYS: meta, msgs, members, dedupe
-- ARGV: sender, encoded message (seq 0), server_time_ms, dedupe_window_ms, retention
--       ('keep:max_age_ms:now_ms', see parse_retention)
-- Returns {0, seq, time, epoch, member...} (new: the current members follow, so the fan-out needs no
-- second round trip), {1, seq, time, epoch} (duplicate), {-1} (no such conversation), {-2, reason}
-- (not allowed).
local meta, msgs, members, dedupe = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local sender, body = ARGV[1], ARGV[2]
local time, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local retention = parse_retention(ARGV[5])

local epoch = redis.call('HGET', meta, 'epoch')
local previous = redis.call('GET', dedupe)
if previous and epoch then
  local seq, stored, stored_epoch = string.match(previous, '^(%d+):(%d+):(%d+)$')
  -- Younger than the window and from this epoch: a retry of the stored message.
  if stored_epoch == epoch and time - tonumber(stored) < window then
    return { 1, tonumber(seq), tonumber(stored), epoch }
  end
end
if not epoch then return { -1 } end
local member = parse_member(redis.call('HGET', members, sender))
if not member or member.left ~= 0 then return { -2, 'sender is not a member' } end

local seq = push_message(meta, msgs, body, retention)
-- Sending marks read; Sync sees it through the conversation's change stamp.
if seq > member.read then
  member.read = seq
  redis.call('HSET', members, sender, fmt_member(member))
end
redis.call('SET', dedupe, string.format('%.0f:%.0f:%s', seq, time, epoch), 'PX', window)
local reply = { 0, seq, time, epoch }
local all = redis.call('HGETALL', members)
for i = 1, #all, 2 do
  local m = parse_member(all[i + 1])
  if m and m.left == 0 then reply[#reply + 1] = all[i] end
end
return reply
