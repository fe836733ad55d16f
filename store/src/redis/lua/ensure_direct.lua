-- Creates a direct conversation with both users as members from seq 1, unless it exists.
-- KEYS: meta, msgs, members   ARGV: user a, user b, epoch for a new conversation
-- Returns 1 if created, 0 if it existed.
local meta, msgs, members = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', meta) == 1 then return 0 end
local stamp = create_meta(meta, msgs, members, 1, '', '', ARGV[3])
redis.call('HSET', meta, 'chg', string.format('%.0f', stamp))
local record = fmt_member({ first = 1, left = 0, read = 0, chg = stamp })
redis.call('HSET', members, ARGV[1], record, ARGV[2], record)
return 1
