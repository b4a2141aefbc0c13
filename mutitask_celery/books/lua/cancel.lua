--! include clock
--! include wake
--! include cancelled
-- cancel: a channel's run is called off (``mutitask cancel``). The channel is marked cancelled
-- (its server takes no more tasks from its generator, devices start none of its tasks), and
-- reloaded tasks waiting in its backlog leave the books as cancelled, up to ARGV[2] of them a
-- call (a backlog can hold a million: the caller calls again while some are left). Tasks in
-- the queue go by drop_cancelled.lua, the caller reading their ids from the messages it pops.
-- KEYS[1] cancelled (channel -> when); KEYS[2] backlog:<ch>; KEYS[3] pending:<ch>;
-- KEYS[4] meta:<ch>; KEYS[5] lost:<ch>; KEYS[6] stats:<ch>; KEYS[7] notify:<ch>
-- ARGV[1] the channel; ARGV[2] at most this many backlog tasks this call.
-- Returns {tasks cancelled now, tasks left in the backlog}.
local cancelled, backlog, pending, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local lost, stats, notify = KEYS[5], KEYS[6], KEYS[7]
local channel, most = ARGV[1], ARGV[2]
if redis.call('HEXISTS', cancelled, channel) == 0 then redis.call('HSET', cancelled, channel, redis_now()) end
local n = 0
for _, id in ipairs(redis.call('ZRANGE', backlog, 0, tonumber(most) - 1)) do
  redis.call('ZREM', backlog, id)
  if cancel_task(pending, meta, lost, id) then n = n + 1 end
end
count_cancelled(stats, notify, n)
return {n, redis.call('ZCARD', backlog)}
