-- reload: move dead-letter records of one channel back into the books, each in the channel's
-- backlog, from which it is fed into the channel as devices make room (feed.lua): a million
-- reloaded records never flood a channel past its size. A record leaves the store and its
-- task enters the books in the same step: never in both, never in neither.
-- KEYS[1] dead index, all channels; KEYS[2] dead index of the channel; KEYS[3] pending:<ch>;
-- KEYS[4] meta:<ch> (id -> "failures|first_failed"); KEYS[5] stats:<ch>; KEYS[6] backlog:<ch>;
-- KEYS[7..6+n] the records, in the order of the ids.
-- ARGV[1] the channel; ARGV[2] the time (the backlog's order); ARGV[3] the newest record
-- version this code reads; ARGV[4..3+n] the ids.
-- Returns {moved, then the ids left alone: another channel's, unreadable, or newer}.
local dead_index, dead_index_ch, pending, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local stats, backlog = KEYS[5], KEYS[6]
local channel, now, version = ARGV[1], ARGV[2], ARGV[3]
local out, gone, ids, to_pending, to_meta, to_backlog = {0}, {}, {}, {}, {}, {}
local function each(command, key, args, width)  -- one call per 1,000 entries, not one an entry
  for i = 1, #args, 1000 * width do
    redis.call(command, key, unpack(args, i, math.min(#args, i + 1000 * width - 1)))
  end
end
for i = 1, #ARGV - 3 do
  local id, rec = ARGV[3 + i], KEYS[6 + i]
  local f = redis.call('HMGET', rec, 'channel', 'data', 'failures', 'first_failed', 'v')
  local record_version = tonumber(f[5] or '0')
  if not f[1] or not f[2] then  -- an index entry whose record is gone
    gone[#gone + 1] = id
  elseif f[1] == channel and record_version and record_version <= tonumber(version) then
    redis.call('DEL', rec)
    ids[#ids + 1] = id
    to_pending[#to_pending + 1] = id
    to_pending[#to_pending + 1] = f[2]
    to_meta[#to_meta + 1] = id
    to_meta[#to_meta + 1] = (f[3] or '1') .. '|' .. (f[4] or '0')
    to_backlog[#to_backlog + 1] = now
    to_backlog[#to_backlog + 1] = id
  else
    out[#out + 1] = id
  end
end
for _, list in ipairs({gone, ids}) do
  each('ZREM', dead_index, list, 1)
  each('ZREM', dead_index_ch, list, 1)
end
if #ids > 0 then
  each('HSET', pending, to_pending, 2)
  each('HSET', meta, to_meta, 2)
  each('ZADD', backlog, to_backlog, 2)
  redis.call('HINCRBY', stats, 'reloaded', #ids)
end
out[1] = #ids
return out
