--! include clock
-- Shared by finish.lua and recover.lua: writes a dead-letter record. rec: the record's key;
-- index_all, index_ch: the failure-time indexes; channels: the set of channels with records;
-- meta: the channel's reload history (id -> "failures|first_failed"); claim: the claim of a
-- device that died while its save function ran ('' for none: see claim.lua).

-- The reason of a task whose device died while its save function ran (see claim.lua).
local LOST_WHILE_SAVING = 'worker lost while saving: the device died after its save function was called on '
  .. 'the result; whether it was saved is unknown, so it is not run again by itself (reload it to)'

local function write_dead_letter(rec, index_all, index_ch, channels, meta, id, channel, data, reason,
                                 tb, device, result, now, claim)
  local failures, first = 1, now
  local history = redis.call('HGET', meta, id)
  if history then
    redis.call('HDEL', meta, id)
    local f, t = string.match(history, '^(%d+)|(.+)$')
    if f then failures = tonumber(f) + 1; first = t end
  end
  redis.call('HSET', rec, 'v', '1', 'id', id, 'channel', channel, 'data', data, 'reason', reason,
    'traceback', tb, 'device', device, 'first_failed', first, 'last_failed', now,
    'failures', failures, 'result', result)
  if claim and claim ~= '' then redis.call('HSET', rec, 'claim', claim) else redis.call('HDEL', rec, 'claim') end
  redis.call('ZADD', index_all, now, id)
  redis.call('ZADD', index_ch, now, id)
  redis.call('SADD', channels, channel)
end

-- True when a late success may replace the record: a burial as 'worker lost' (its device was
-- only taken for dead: frozen, cut off, or a long C call holding the GIL) that no other run's
-- save function may have saved (its claim is none, or ``claim``'s own).
local function revivable(rec, claim)
  local f = redis.call('HMGET', rec, 'reason', 'claim')
  return f[1] and string.sub(f[1], 1, 11) == 'worker lost' and (not f[2] or f[2] == '' or f[2] == claim)
end
