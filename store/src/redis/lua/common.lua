-- Helpers prepended to every Ferry script (see scripts.rs). All keys of one call share the hash tag
-- {c:<conversation>}, so a script touches exactly one Redis Cluster slot.
--
-- Member record (a field of the members hash): "first|left|read|chg" with left = 0 for current members;
-- chg is the stamp of the member's last membership or read-cursor change.

local function parse_member(raw)
  if not raw then return nil end
  local first, left, read, chg = string.match(raw, '^(%d+)|(%d+)|(%d+)|(%d+)$')
  return { first = tonumber(first), left = tonumber(left), read = tonumber(read), chg = tonumber(chg) }
end

local function fmt_member(m)
  return string.format('%.0f|%.0f|%.0f|%.0f', m.first, m.left, m.read, m.chg)
end

-- A change stamp: this node's clock in microseconds, strictly above every stamp this conversation gave
-- before (so it never goes backwards here even if the clock does). Sync tokens are built from stamps.
local function next_stamp(meta)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('HGET', meta, 'stamp') or '0')
  if now <= last then now = last + 1 end
  redis.call('HSET', meta, 'stamp', string.format('%.0f', now))
  return now
end

-- Appends an encoded message (its seq is the stream id) as the next seq; returns seq and stamp.
-- keep > 0 trims the stream to the newest `keep` messages and records the trim point, which readers
-- report as the first readable seq (never a silent gap).
local function push_message(meta, msgs, body, keep)
  local seq = redis.call('HINCRBY', meta, 'head', 1)
  local stamp = next_stamp(meta)
  redis.call('HSET', meta, 'chg', string.format('%.0f', stamp))
  redis.call('XADD', msgs, seq .. '-0', 'm', body)
  if keep > 0 and seq > keep then
    redis.call('XTRIM', msgs, 'MINID', (seq - keep + 1) .. '-0')
    redis.call('HSET', meta, 'trim', seq - keep)
  end
  return seq, stamp
end

-- Creates a conversation's meta hash with the given epoch. Leftovers of an earlier life of the
-- conversation (a stream or members whose meta was lost) are dropped: the new epoch starts empty.
local function create_meta(meta, msgs, members, kind, name, owner, epoch)
  redis.call('DEL', msgs, members)
  redis.call('HSET', meta, 'kind', kind, 'name', name, 'owner', owner, 'epoch', epoch, 'head', 0,
    'trim', 0)
  return next_stamp(meta)
end
