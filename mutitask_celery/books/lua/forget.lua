--! include clock
-- forget: drop a device silent since ARGV[2] with nothing in hand from the roster, and leave a
-- tombstone (heard.lua tells the device, should it ever come back, that its counts are gone).
-- KEYS[1] devices:seen; KEYS[2] devices:beats; KEYS[3] inhand:<device>; KEYS[4] devices:info;
-- KEYS[5] devices:done; KEYS[6] devices:wanted; KEYS[7] devices:forgotten; KEYS[8] steps:<device>
-- ARGV[1] device name; ARGV[2] its last heartbeat, as read.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] or redis.call('HLEN', KEYS[3]) > 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
redis.call('DEL', KEYS[8])
redis.call('HSET', KEYS[7], ARGV[1], redis_now())
return 1
