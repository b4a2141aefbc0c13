--! include clock
-- Shared by finish.lua and recover.lua: writes a dead-letter record. rec: the record's key;
-- index_all, index_ch: the failure-time indexes; channels: the set of channels with records;
-- meta: the channel's reload history (id -> "failures|first_failed").

local function write_dead_letter(rec, index_all, index_ch, channels, meta, id, channel, data, reason,
                                 tb, device, result, now)
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
  redis.call('ZADD', index_all, now, id)
  redis.call('ZADD', index_ch, now, id)
  redis.call('SADD', channels, channel)
end
