--! include lease_check
-- lease_keep: renew a lease, only for its holder (see lease_check.lua: a lapsed lease nobody
-- took since is taken back).
-- KEYS[1] the lease (mutitask:lease:<what>); KEYS[2] lease:holders
-- ARGV[1] the holder's value; ARGV[2] the lease's time to live, ms
-- Returns {1, ''} when kept, else {0, the value of whoever holds it now ('' for nobody)}.
local lease, holders = KEYS[1], KEYS[2]
local value, ttl = ARGV[1], ARGV[2]
if lease_kept(lease, holders, value, ttl) then
  return {1, ''}
end
return {0, redis.call('GET', lease) or ''}
