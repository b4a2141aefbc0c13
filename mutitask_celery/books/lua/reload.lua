--! include dead_index
--! include dead_match
-- reload: move dead-letter records of one channel back into the books, each in the channel's
-- backlog, from which it is fed into the channel as devices make room (feed.lua): a million
-- reloaded records never flood a channel past its size. A record leaves the store (its indexes
-- included) and its task enters the books in the same step: never in both, never in neither.
-- KEYS[1] dead index, all channels; KEYS[2] dead index of the channel; KEYS[3] pending:<ch>;
-- KEYS[4] meta:<ch> (id -> "failures|first_failed"); KEYS[5] stats:<ch>; KEYS[6] backlog:<ch>;
-- KEYS[7] the dead-letter field index (dead_index.lua); KEYS[8..7+n] the records, in the order
-- of the ids.
-- ARGV[1] the channel; ARGV[2] the time (the backlog's order); ARGV[3] the newest record
-- version this code reads; ARGV[4..8] a filter's clauses (dead_match.lua; '' each for none):
-- since, up_to, device, the reason's kind ('sub', 'prefix' or ''), the reason; ARGV[9] '1' when
-- the caller judged the records by more than those (a glob, the task's text): each comes with
-- its last failure time as read, and moves only if it still has it (it was not written again
-- since: a task that failed again is a new judgement), else ''; ARGV[10..9+n] the ids; then,
-- when ARGV[9] is '1', ARGV[10+n..9+2n] their failure times.
-- Returns {moved, passed over (the filter does not hold, or written again), then the ids left
-- alone: another channel's, unreadable, or newer}.
local dead_index, dead_index_ch, pending, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local stats, backlog, dead_by_field = KEYS[5], KEYS[6], KEYS[7]
local channel, now, version, since = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local up_to, device, reason_kind, reason = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local stamped = ARGV[9]
local n = #KEYS - 7
local flt = filter_of(since, up_to, device, reason_kind, reason)
local out, passed, gone, ids, to_pending, to_meta, to_backlog, unindexed = {0, 0}, 0, {}, {}, {}, {}, {}, {}
local function each(command, key, args, width)  -- one call per 1,000 entries, not one an entry
  for i = 1, #args, 1000 * width do
    redis.call(command, key, unpack(args, i, math.min(#args, i + 1000 * width - 1)))
  end
end
local read = {'channel', 'data', 'failures', 'first_failed', 'v', 'last_failed', unpack(INDEXED_FIELDS)}
local at = {}  -- where each indexed field's value is in what HMGET returns
for j, name in ipairs(INDEXED_FIELDS) do at[name] = 6 + j end
local newest, checked = tonumber(version), stamped == '1'
for i = 1, n do
  local id, rec = ARGV[9 + i], KEYS[7 + i]
  local f = redis.call('HMGET', rec, unpack(read))
  local record_version = tonumber(f[5] or '0')
  if not f[1] or not f[2] then  -- an index entry whose record is gone
    gone[#gone + 1] = id
  elseif f[1] ~= channel or not record_version or record_version > newest then
    out[#out + 1] = id
  elseif (checked and f[6] ~= ARGV[9 + n + i])
      or (flt.asks and not filter_holds(flt, f[6], f[at.device], f[at.reason])) then
    passed = passed + 1
  else
    redis.call('DEL', rec)
    ids[#ids + 1] = id
    to_pending[#to_pending + 1] = id
    to_pending[#to_pending + 1] = f[2]
    to_meta[#to_meta + 1] = id
    to_meta[#to_meta + 1] = (f[3] or '1') .. '|' .. (f[4] or '0')
    to_backlog[#to_backlog + 1] = now
    to_backlog[#to_backlog + 1] = id
    for j = 1, #INDEXED_FIELDS do  -- index_entries' entries, built here: no table a record
      local value = f[6 + j] or ''
      if #value > INDEX_CUT then value = index_cut(value) end
      unindexed[#unindexed + 1] = INDEXED_FIELDS[j] .. '\0' .. value .. '\0' .. f[1] .. '\0' .. id
    end
  end
end
for _, list in ipairs({gone, ids}) do
  each('ZREM', dead_index, list, 1)
  each('ZREM', dead_index_ch, list, 1)
end
each('ZREM', dead_by_field, unindexed, 1)
if #ids > 0 then
  each('HSET', pending, to_pending, 2)
  each('HSET', meta, to_meta, 2)
  each('ZADD', backlog, to_backlog, 2)
  redis.call('HINCRBY', stats, 'reloaded', #ids)
end
out[1], out[2] = #ids, passed
return out
