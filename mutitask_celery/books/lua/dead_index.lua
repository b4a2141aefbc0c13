--! record
-- Shared by the steps that write or remove dead-letter records: the field index, one sorted set
-- (every score 0, read by ZRANGEBYLEX) of '<field>\0<value>\0<channel>\0<id>', one entry per record
-- and per field records.py marks indexed (INDEXED_FIELDS, pasted in by the loader with the
-- record's fields): the filters find the records of a device, or whose reason starts with a
-- text, in O(log N + what they find), and know each one's channel (whose books a reload needs)
-- without reading it. A value is kept to its first INDEX_CUT bytes (cut where a character
-- starts, as records.index_cut does): the index names candidates, the caller checks each whole.
-- Every step that writes a record files it here, and every step that removes one takes it out,
-- in the same step: the index holds exactly the records the store holds (reindex.lua files the
-- records older versions wrote without it).

local function index_cut(value)
  if #value <= INDEX_CUT then return value end
  local n = INDEX_CUT
  while n > 0 do
    local b = string.byte(value, n + 1)
    if b < 128 or b >= 192 then break end  -- the byte after the cut starts a character
    n = n - 1
  end
  return string.sub(value, 1, n)
end

-- The index's entries of a record, from its fields' values by name (its channel among them; a
-- value absent: '').
local function index_entries(id, values)
  local entries = {}
  for _, name in ipairs(INDEXED_FIELDS) do
    entries[#entries + 1] = name .. '\0' .. index_cut(values[name] or '') .. '\0' .. values.channel .. '\0' .. id
  end
  return entries
end

local function index_add(by_field, id, values)
  for _, entry in ipairs(index_entries(id, values)) do redis.call('ZADD', by_field, 0, entry) end
end

local function index_remove(by_field, id, values)
  redis.call('ZREM', by_field, unpack(index_entries(id, values)))
end

-- The values of a stored record's indexed fields, by name; nil when there is no record (no hash
-- with a channel: what reload.lua and delete.lua take for a record gone).
local function indexed_values(rec)
  local read = redis.call('HMGET', rec, 'channel', unpack(INDEXED_FIELDS))
  if not read[1] then return nil end
  local values = {channel = read[1]}
  for i, name in ipairs(INDEXED_FIELDS) do values[name] = read[i + 1] or '' end
  return values
end

-- Take a record out of the index before it is deleted or written again (nothing when absent).
local function index_forget(by_field, rec, id)
  local values = indexed_values(rec)
  if values then index_remove(by_field, id, values) end
end
