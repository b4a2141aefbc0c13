--! include dead_index
-- reindex: bring the dead-letter field index (dead_index.lua) back to what the records hold, a
-- page at a time, for records that were written without it (by a version before it, or by hand)
-- or taken away without it. Mode 'file' files each record named (an index entry that is already
-- there stays as it is) and drops an entry of the failure-time index whose record is gone; mode
-- 'check' drops each field-index entry named whose record is gone or no longer holds that value.
-- KEYS[1] dead index, all channels; KEYS[2] the dead-letter field index; KEYS[3..2+n] the
-- records, in the order of ARGV[2..].
-- ARGV[1] 'file' or 'check'; ARGV[2..1+n] 'file': the ids; 'check': field-index entries.
-- Returns how many entries it added ('file') or dropped ('check').
local dead_index, dead_by_field = KEYS[1], KEYS[2]
local mode = ARGV[1]
local changed = 0
for i = 2, #ARGV do
  local rec = KEYS[1 + i]
  if mode == 'file' then
    local id = ARGV[i]
    local values = indexed_values(rec)
    if values then
      for _, entry in ipairs(index_entries(id, values)) do
        changed = changed + redis.call('ZADD', dead_by_field, 0, entry)
      end
    else
      redis.call('ZREM', dead_index, id)
    end
  else
    local entry = ARGV[i]
    local id = string.match(entry, '%z[^%z]*%z([^%z]*)$')  -- '<field>\0<value>\0<channel>\0<id>'
    local values = id and indexed_values(rec)
    local held = false
    if values then
      for _, own in ipairs(index_entries(id, values)) do held = held or own == entry end
    end
    if not held then changed = changed + redis.call('ZREM', dead_by_field, entry) end
  end
end
return changed
