-- retire: a dead device with nothing left in hand leaves the set the reapers scan, so reaping
-- costs what is alive or recently dead, not every name ever seen. It comes back with its
-- next heartbeat.
-- KEYS[1] devices:seen; KEYS[2] devices:beats; KEYS[3] inhand:<device>
-- ARGV[1] device name; ARGV[2] the heartbeat the reaper judged too old.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] and redis.call('HLEN', KEYS[3]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
