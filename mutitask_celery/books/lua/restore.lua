-- restore: put back on its queue a message kombu had taken off it (BRPOP) and noted as
-- unacked, for a device that died before noting it in hand (the sweep's orphans).
-- KEYS[1] kombu's unacked hash; KEYS[2] kombu's unacked index; KEYS[3] the message's queue.
-- ARGV[1] the delivery tag; ARGV[2..] the message(s) to push (the redelivered form).
-- Returns 1 if this step restored it, 0 if another had (or it was acknowledged) meanwhile.
local unacked, unacked_index, queue = KEYS[1], KEYS[2], KEYS[3]
local tag = ARGV[1]
if redis.call('HDEL', unacked, tag) == 1 then
  redis.call('ZREM', unacked_index, tag)
  for i = 2, #ARGV do redis.call('RPUSH', queue, ARGV[i]) end
  return 1
end
return 0
