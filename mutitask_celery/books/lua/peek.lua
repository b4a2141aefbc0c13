-- peek: read the same fields of many dead-letter records at once, for a filter to judge them
-- (dead_search.py): one call a page of candidates, not one a record. Reads only.
-- KEYS[1..n] the records.
-- ARGV[1..m] the fields' names.
-- Returns, record after record in the order of KEYS, its m values (nil for a field it lacks,
-- all nil for a record gone).
local out = {}
for i = 1, #KEYS do
  local values = redis.call('HMGET', KEYS[i], unpack(ARGV))
  for j = 1, #ARGV do out[#out + 1] = values[j] end
end
return out
