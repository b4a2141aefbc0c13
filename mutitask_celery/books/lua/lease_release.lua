-- lease_release: let go of a lease at a clean end, only if the caller holds it (a lease another
-- process took is left alone). Its last taker's note becomes '': the caller can never take it
-- back (see lease_check.lua), however late a step of its comes.
-- KEYS[1] the lease (mutitask:lease:<what>); KEYS[2] lease:holders
-- ARGV[1] the holder's value
-- Returns 1 if the lease was the caller's, else 0.
local lease, holders = KEYS[1], KEYS[2]
local value = ARGV[1]
local mine = 0
if redis.call('GET', lease) == value then
  redis.call('DEL', lease)
  mine = 1
end
if redis.call('HGET', holders, lease) == value then
  redis.call('HSET', holders, lease, '')
  mine = 1
end
return mine
