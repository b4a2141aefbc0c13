-- lease_take: take a lease that is free, or that the caller judged its holder dead of (a process
-- of this host that is gone): a compare-and-set, so of several takers exactly one gets it.
-- KEYS[1] the lease (mutitask:lease:<what>, a string that expires); KEYS[2] lease:holders
-- ARGV[1] the taker's value (host, pid, token, since); ARGV[2] the lease's time to live, ms;
-- ARGV[3] the value of the holder the taker may replace ('' for none: only a free lease).
-- Returns {1, ARGV[1], ARGV[2]} when taken, else {0, the holder's value, its milliseconds left}.
local lease, holders = KEYS[1], KEYS[2]
local value, ttl, replaces = ARGV[1], ARGV[2], ARGV[3]
local held = redis.call('GET', lease)
if held and held ~= replaces then
  return {0, held, redis.call('PTTL', lease)}
end
redis.call('SET', lease, value, 'PX', ttl)
redis.call('HSET', holders, lease, value)
return {1, value, tonumber(ttl)}
