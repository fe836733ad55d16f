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

-- Retention, passed as one argument "keep:max_age_ms:now_ms" (0 = unlimited). `now` is the caller's
-- clock (the message's server time), so the age rule follows the server, not Redis, and tests can
-- inject it.
local function parse_retention(raw)
  local keep, age, now = string.match(raw, '^(%d+):(%d+):(%d+)$')
  return { keep = tonumber(keep), age = tonumber(age), now = tonumber(now) }
end

-- Most expired messages one append examines: bounds the script's work. A backlog (retention just
-- switched on) is worked off over the following appends, each step announced by the trim point.
local AGE_TRIM_BATCH = 64

-- The newest seq whose message is older than `cutoff`, at or above `trim` (entries are in seq order and
-- so, nearly, in time order; the first young one stops the scan, so nothing younger is ever dropped).
-- Entries stored without a time (before retention by age existed) stop the scan too: they are aged
-- out only by the count rule.
local function expired_through(msgs, trim, cutoff)
  local entries = redis.call('XRANGE', msgs, '-', '+', 'COUNT', AGE_TRIM_BATCH)
  for _, entry in ipairs(entries) do
    local fields, time = entry[2], nil
    for i = 1, #fields, 2 do
      if fields[i] == 't' then time = tonumber(fields[i + 1]) end
    end
    if not time or time >= cutoff then break end
    trim = math.max(trim, tonumber(string.match(entry[1], '^(%d+)-')))
  end
  return trim
end

-- Appends an encoded message (its seq is the stream id, its server time the field `t`) as the next
-- seq; returns seq and stamp. Retention (see `parse_retention`) then trims the oldest messages —
-- beyond the newest `keep`, or older than `age` ms — and records the trim point in the meta hash,
-- which readers report as the first readable seq (never a silent gap). The new message itself is
-- never trimmed (keep >= 1, age > 0).
local function push_message(meta, msgs, body, retention)
  local seq = redis.call('HINCRBY', meta, 'head', 1)
  local stamp = next_stamp(meta)
  redis.call('HSET', meta, 'chg', string.format('%.0f', stamp))
  redis.call('XADD', msgs, seq .. '-0', 'm', body, 't', string.format('%.0f', retention.now))
  if retention.keep == 0 and retention.age == 0 then return seq, stamp end
  local trim = tonumber(redis.call('HGET', meta, 'trim') or '0')
  local new_trim = trim
  if retention.keep > 0 and seq > retention.keep then
    new_trim = math.max(new_trim, seq - retention.keep)
  end
  if retention.age > 0 then
    new_trim = expired_through(msgs, new_trim, retention.now - retention.age)
  end
  if new_trim > trim then
    redis.call('XTRIM', msgs, 'MINID', string.format('%.0f-0', new_trim + 1))
    redis.call('HSET', meta, 'trim', string.format('%.0f', new_trim))
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
