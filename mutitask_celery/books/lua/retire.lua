-- retire: a dead device with nothing left in hand leaves the set the reapers scan, so reaping
-- costs what is alive or recently dead, not every name ever seen. It comes back with its
-- next heartbeat.
-- KEYS[1] devices:seen; KEYS[2] devices:beats; KEYS[3] inhand:<device>
-- ARGV[1] device name; ARGV[2] the heartbeat the reaper judged too old.
local devices_seen, devices_beats, inhand = KEYS[1], KEYS[2], KEYS[3]
local device, seen = ARGV[1], ARGV[2]
if redis.call('HGET', devices_seen, device) == seen and redis.call('HLEN', inhand) == 0 then
  redis.call('ZREM', devices_beats, device)
  return 1
end
return 0
