-- feed: move tasks from a channel's backlog (reloaded from the dead-letter store) into the
-- channel, while fewer tasks than its size wait there. Each message goes only if every task
-- it carries is still in the backlog (another feeder may have taken some meanwhile).
-- KEYS[1] backlog:<ch>; KEYS[2] pending:<ch>; KEYS[3] held:<ch>; KEYS[4] the queue;
-- KEYS[5] unsent:<ch> (the journal, for a broker that is not this Redis)
-- ARGV[1] the channel size; ARGV[2] 'queue' (this Redis is the broker) or 'journal';
-- ARGV[3] the journal's time; ARGV[4..] per message: k, its k task ids, the message ('' when
-- journalled: its publisher sends it).
-- Returns the ids of the tasks that went, in order.
local backlog, pending, held, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local unsent = KEYS[5]
local channel_size, mode, now = ARGV[1], ARGV[2], ARGV[3]
local waiting = redis.call('HLEN', pending) - math.max(0, tonumber(redis.call('GET', held) or '0'))
                - redis.call('ZCARD', backlog)
local size, went, i = tonumber(channel_size), {}, 4
while i <= #ARGV do
  local k = tonumber(ARGV[i])
  local ids, message = {unpack(ARGV, i + 1, i + k)}, ARGV[i + k + 1]
  i = i + k + 2
  if waiting > 0 and waiting + k > size then break end
  local all = true
  for _, id in ipairs(ids) do
    if not redis.call('ZSCORE', backlog, id) then all = false end
  end
  if all then
    for _, id in ipairs(ids) do
      redis.call('ZREM', backlog, id)
      if mode == 'journal' then redis.call('ZADD', unsent, now, id) end
      went[#went + 1] = id
    end
    if mode == 'queue' then redis.call('LPUSH', queue, message) end
    waiting = waiting + k
  end
end
return went
