-- Raises a device's delivery cursor (never lowers it), clamped to the conversation head so that the
-- server needs no separate head lookup per Ack; nothing is stored for an unknown conversation.
-- KEYS: meta, cursors   ARGV: field (user + device), seq
local head = redis.call('HGET', KEYS[1], 'head')
if not head then return 0 end
-- The strings are stored as they came, never a Lua number (which %.14g would round).
local wanted = ARGV[2]
if tonumber(wanted) > tonumber(head) then wanted = head end
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(wanted) > current then redis.call('HSET', KEYS[2], ARGV[1], wanted) end
return 0
