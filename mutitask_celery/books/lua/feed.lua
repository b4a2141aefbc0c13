-- feed: move tasks from a channel's backlog (reloaded from the dead-letter store) into the
-- channel, while fewer tasks than its size wait there. Each message goes only if every task
-- it carries is still in the backlog (another feeder may have taken some meanwhile).
-- KEYS[1] backlog:<ch>; KEYS[2] pending:<ch>; KEYS[3] held:<ch>; KEYS[4] the queue;
-- KEYS[5] unsent:<ch> (the journal, for a broker that is not this Redis)
-- ARGV[1] the channel size; ARGV[2] 'queue' (this Redis is the broker) or 'journal';
-- ARGV[3] the journal's time; then per message: k, its k task ids, the message ('' when
-- journalled: its publisher sends it).
-- Returns the ids of the tasks that went, in order.
local waiting = redis.call('HLEN', KEYS[2]) - math.max(0, tonumber(redis.call('GET', KEYS[3]) or '0'))
                - redis.call('ZCARD', KEYS[1])
local size, went, i = tonumber(ARGV[1]), {}, 4
while i <= #ARGV do
  local k = tonumber(ARGV[i])
  local ids, message = {unpack(ARGV, i + 1, i + k)}, ARGV[i + k + 1]
  i = i + k + 2
  if waiting > 0 and waiting + k > size then break end
  local all = true
  for _, id in ipairs(ids) do
    if not redis.call('ZSCORE', KEYS[1], id) then all = false end
  end
  if all then
    for _, id in ipairs(ids) do
      redis.call('ZREM', KEYS[1], id)
      if ARGV[2] == 'journal' then redis.call('ZADD', KEYS[5], ARGV[3], id) end
      went[#went + 1] = id
    end
    if ARGV[2] == 'queue' then redis.call('LPUSH', KEYS[4], message) end
    waiting = waiting + k
  end
end
return went
