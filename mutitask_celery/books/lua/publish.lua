--! include lease_check
-- publish: enter tasks in the books and put their messages on the channel's queue (or, for a
-- broker that is not this Redis, in the journal of what its publisher must send), if the
-- channel has room for them; and read the channel's books after, all in one step. A step
-- repeated after its reply was lost (the same step id) is not applied twice. Fenced by the
-- server's lease of the channel (see books/leases.py): a server whose lease another server
-- took publishes nothing.
-- KEYS[1] pending:<ch>; KEYS[2] stats:<ch>; KEYS[3] held:<ch>; KEYS[4] the queue;
-- KEYS[5] steps:server; KEYS[6] unsent:<ch> (the other broker's journal); KEYS[7] backlog:<ch>;
-- KEYS[8] run:<name> (a resumable run's record, see books/runs.py); KEYS[9] lease:channel:<ch>
-- (the server's lease of the channel); KEYS[10] lease:holders
-- ARGV[1] channel size: publish only while fewer tasks than that wait in the channel, counting
--   these ('0': no bound); ARGV[2] step id; ARGV[3] this channel's field in steps:server;
-- ARGV[4] 'queue' (this Redis is the broker) or 'journal'; ARGV[5] the journal's time;
-- ARGV[6] n, the tasks; ARGV[7] the channel, to note in the run's record ('' for no record);
-- ARGV[8] items the server had taken from the channel's generator with these;
-- ARGV[9] the server's lease value ('' for a step no lease fences); ARGV[10] the lease's time
-- to live, ms; ARGV[11] the channel's byte budget: publish only while the data of the channel's
--   outstanding tasks, counting these, stays within it ('0': no byte bound); ARGV[12..11+2n]
--   (id, data) pairs; then, on the queue, each message to queue as m, a piece of its envelope,
--   then m times the number i of a pair and the next piece: the data of the i-th pair goes
--   between them (the data travels to Redis once; see books/messages.py template).
-- Returns {1 if published (now or by the earlier try), 0 if the channel had no room, -1 if the
-- lease is another server's (nothing published), then outstanding, held, backlog, then the
-- channel's counters as field/value pairs}.
local pending, stats, held, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local steps, unsent, backlog, run = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local lease, lease_holders = KEYS[9], KEYS[10]
local channel_size, step, slot, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, tasks, run_channel, taken = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local lease_value, lease_ttl, byte_budget = ARGV[9], ARGV[10], ARGV[11]
local n = tonumber(tasks)
local function books(published)
  return {published, redis.call('HLEN', pending), tonumber(redis.call('GET', held) or '0'),
          redis.call('ZCARD', backlog), unpack(redis.call('HGETALL', stats))}
end
if n == 0 then return books(0) end
if redis.call('HGET', steps, slot) == step then return books(1) end
if lease_value ~= '' and not lease_kept(lease, lease_holders, lease_value, lease_ttl) then return books(-1) end
local size, budget = tonumber(channel_size), tonumber(byte_budget)
local waiting = redis.call('HLEN', pending) - math.max(0, tonumber(redis.call('GET', held) or '0'))
                - redis.call('ZCARD', backlog)
-- With nothing waiting the tasks go whatever their size: a task larger than the budget travels
-- alone rather than blocking the run, and devices are never left without work.
if waiting > 0 then
  if size > 0 and waiting + n > size then return books(0) end
  if budget > 0 then
    local bytes = 0
    for i = 13, 11 + 2 * n, 2 do bytes = bytes + #ARGV[i] end
    for _, id in ipairs(redis.call('HKEYS', pending)) do bytes = bytes + redis.call('HSTRLEN', pending, id) end
    if bytes > budget then return books(0) end
  end
end
redis.call('HSET', pending, unpack(ARGV, 12, 11 + 2 * n))
redis.call('HINCRBY', stats, 'published', n)
redis.call('HSET', steps, slot, step)
if run_channel ~= '' then
  redis.call('HSET', run, 'taken:' .. run_channel, taken)
  redis.call('HINCRBY', run, 'published:' .. run_channel, n)
end
if mode == 'queue' then
  local at = 12 + 2 * n
  while at <= #ARGV do
    local m = tonumber(ARGV[at])
    local parts = {ARGV[at + 1]}
    for j = 1, m do
      parts[2 * j] = ARGV[11 + 2 * tonumber(ARGV[at + 2 * j])]
      parts[2 * j + 1] = ARGV[at + 2 * j + 1]
    end
    redis.call('LPUSH', queue, table.concat(parts))
    at = at + 2 * m + 2
  end
else
  for i = 12, 11 + 2 * n, 2 do redis.call('ZADD', unsent, now, ARGV[i]) end
end
return books(1)
