--! include dead_index
--! include dead_match
-- delete: drop dead-letter records of one channel, each with its index entries.
-- KEYS[1] dead index, all channels; KEYS[2] dead index of the channel; KEYS[3] the
-- retention limits' dropped counters (channel -> count); KEYS[4] the dead-letter field index
-- (dead_index.lua); KEYS[5..4+n] the records, in the order of the ids.
-- ARGV[1] 'count' (the retention limits drop them: counted in KEYS[3]) or ''; ARGV[2] the
-- channel; ARGV[3..7] a filter's clauses (dead_match.lua; '' each for none): since, up_to,
-- device, the reason's kind, the reason; ARGV[8] '1' when the caller judged the records by more
-- than those: each comes with its last failure time as read, and goes only if it still has it
-- (see reload.lua), else ''; ARGV[9..8+n] the ids; then, when ARGV[8] is '1',
-- ARGV[9+n..8+2n] their failure times.
-- Returns how many records were deleted. A record of another channel is left alone (the
-- caller read its channel before, and it moved since: it is not this step's), and so is one
-- the filter does not hold for; an index entry whose record is gone is dropped.
local dead_index, dead_index_ch, dropped, dead_by_field = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local count, channel, since, up_to = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local device, reason_kind, reason, stamped = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local n = #KEYS - 4
local flt = filter_of(since, up_to, device, reason_kind, reason)
local deleted = 0
for i = 1, n do
  local id, rec = ARGV[8 + i], KEYS[4 + i]
  local f = redis.call('HMGET', rec, 'channel', 'last_failed', unpack(INDEXED_FIELDS))
  local values = {channel = f[1]}
  for j, name in ipairs(INDEXED_FIELDS) do values[name] = f[2 + j] end
  if not f[1] then
    redis.call('ZREM', dead_index, id)
    redis.call('ZREM', dead_index_ch, id)
  elseif f[1] == channel and (stamped ~= '1' or f[2] == ARGV[8 + n + i])
      and filter_holds(flt, f[2], values.device, values.reason) then
    redis.call('ZREM', dead_by_field, unpack(index_entries(id, values)))
    redis.call('DEL', rec)
    redis.call('ZREM', dead_index, id)
    redis.call('ZREM', dead_index_ch, id)
    if count == 'count' then redis.call('HINCRBY', dropped, f[1], 1) end
    deleted = deleted + 1
  end
end
return deleted
