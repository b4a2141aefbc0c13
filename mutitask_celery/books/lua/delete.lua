-- delete: drop dead-letter records of one channel, each with its index entries.
-- KEYS[1] dead index, all channels; KEYS[2] dead index of the channel; KEYS[3] the
-- retention limits' dropped counters (channel -> count); KEYS[4..3+n] the records, in the
-- order of the ids.
-- ARGV[1] 'count' (the retention limits drop them: counted in KEYS[3]) or ''; ARGV[2] the
-- channel; ARGV[3..2+n] the ids.
-- Returns how many records were deleted. A record of another channel is left alone (the
-- caller read its channel before, and it moved since: it is not this step's); an index
-- entry whose record is gone is dropped.
local dead_index, dead_index_ch, dropped = KEYS[1], KEYS[2], KEYS[3]
local count, channel = ARGV[1], ARGV[2]
local n = 0
for i = 1, #ARGV - 2 do
  local id, rec = ARGV[2 + i], KEYS[3 + i]
  local ch = redis.call('HGET', rec, 'channel')
  if not ch then
    redis.call('ZREM', dead_index, id)
    redis.call('ZREM', dead_index_ch, id)
  elseif ch == channel then
    redis.call('DEL', rec)
    redis.call('ZREM', dead_index, id)
    redis.call('ZREM', dead_index_ch, id)
    if count == 'count' then redis.call('HINCRBY', dropped, ch, 1) end
    n = n + 1
  end
end
return n
