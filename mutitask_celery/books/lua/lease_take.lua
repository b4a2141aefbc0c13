-- lease_take: take a lease that is free, or that the caller judged its holder dead of (a process
-- of this host that is gone): a compare-and-set, so of several takers exactly one gets it.
-- KEYS[1] the lease (mutitask:lease:<what>, a string that expires); KEYS[2] lease:holders
-- ARGV[1] the taker's value (host, pid, token, since); ARGV[2] the lease's time to live, ms;
-- ARGV[3] the value of the holder the taker may replace ('' for none: only a free lease).
-- Returns {1, ARGV[1], ARGV[2]} when taken, else {0, the holder's value, its milliseconds left}.
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[3] then
  return {0, held, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], KEYS[1], ARGV[1])
return {1, ARGV[1], tonumber(ARGV[2])}
