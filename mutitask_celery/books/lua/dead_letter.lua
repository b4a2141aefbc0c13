--! include clock
--! include dead_index
-- Shared by finish.lua and recover.lua: writes a dead-letter record. rec: the record's key;
-- index_all, index_ch: the failure-time indexes; by_field: the field index (dead_index.lua);
-- channels: the set of channels with records;
-- meta: the channel's reload history (id -> "failures|first_failed"); claim: the claim of a
-- device that died while its save function ran ('' for none: see claim.lua). The record's
-- fields are the ones records.py declares (RECORD_FIELDS, pasted in by the loader through
-- dead_index.lua): a new field is a line there and its value in ``record_values`` below.

-- The reason of a task whose device died while its save function ran (see claim.lua).
local LOST_WHILE_SAVING = 'worker lost while saving: the device died after its save function was called on '
  .. 'the result; whether it was saved is unknown, so it is not run again by itself (reload it to)'

-- The values of a record's fields, by name (RECORD_FIELDS says which are stored, in what order).
local function record_values(id, channel, data, reason, tb, device, first, now, failures, result)
  return {id = id, channel = channel, data = data, reason = reason, traceback = tb, device = device,
          first_failed = first, last_failed = now, failures = failures, result = result}
end

do  -- checked when a step starts, before it writes anything: Redis keeps a script's writes when it fails
  local probe = record_values('', '', '', '', '', '', '', '', '', '')
  for _, name in ipairs(RECORD_FIELDS) do
    if probe[name] == nil then error('dead_letter.lua has no value for the record field ' .. name) end
  end
end

local function write_dead_letter(rec, index_all, index_ch, by_field, channels, meta, id, channel, data,
                                 reason, tb, device, result, now, claim)
  local failures, first = 1, now
  local history = redis.call('HGET', meta, id)
  if history then
    redis.call('HDEL', meta, id)
    local f, t = string.match(history, '^(%d+)|(.+)$')
    if f then failures = tonumber(f) + 1; first = t end
  end
  local values = record_values(id, channel, data, reason, tb, device, first, now, failures, result)
  index_forget(by_field, rec, id)  -- a record written again may have another reason or device
  local stored = {'v', RECORD_VERSION}
  for _, name in ipairs(RECORD_FIELDS) do  -- the fields FailedTask declares, in its order
    stored[#stored + 1] = name
    stored[#stored + 1] = values[name]
  end
  redis.call('HSET', rec, unpack(stored))
  if claim and claim ~= '' then redis.call('HSET', rec, 'claim', claim) else redis.call('HDEL', rec, 'claim') end
  redis.call('ZADD', index_all, now, id)
  redis.call('ZADD', index_ch, now, id)
  index_add(by_field, id, values)
  redis.call('SADD', channels, channel)
end

-- True when a late success may replace the record: a burial as 'worker lost' (its device was
-- only taken for dead: frozen, cut off, or a long C call holding the GIL) that no other run's
-- save function may have saved (its claim is none, or ``claim``'s own).
local function revivable(rec, claim)
  local f = redis.call('HMGET', rec, 'reason', 'claim')
  return f[1] and string.sub(f[1], 1, 11) == 'worker lost' and (not f[2] or f[2] == '' or f[2] == claim)
end
