--! include clock
-- forget: drop a device silent since ARGV[2] with nothing in hand from the roster, and leave a
-- tombstone (heard.lua tells the device, should it ever come back, that its counts are gone).
-- KEYS[1] devices:seen; KEYS[2] devices:beats; KEYS[3] inhand:<device>; KEYS[4] devices:info;
-- KEYS[5] devices:done; KEYS[6] devices:wanted; KEYS[7] devices:forgotten; KEYS[8] steps:<device>
-- ARGV[1] device name; ARGV[2] its last heartbeat, as read.
local devices_seen, devices_beats, inhand, devices_info = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local devices_done, devices_wanted, devices_forgotten, steps = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local device, seen = ARGV[1], ARGV[2]
if redis.call('HGET', devices_seen, device) ~= seen or redis.call('HLEN', inhand) > 0 then return 0 end
redis.call('HDEL', devices_seen, device)
redis.call('ZREM', devices_beats, device)
redis.call('HDEL', devices_info, device)
redis.call('HDEL', devices_done, device)
redis.call('HDEL', devices_wanted, device)
redis.call('DEL', steps)
redis.call('HSET', devices_forgotten, device, redis_now())
return 1
