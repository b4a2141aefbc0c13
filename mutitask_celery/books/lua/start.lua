--! include clock
-- start: a device starts running the tasks of a message. Only started messages are charged a
-- death when their device dies; starting is a heartbeat too, so a reaper that judged the
-- device dead before this step leaves the message alone (its fence is the heartbeat).
-- KEYS[1] devices:seen; KEYS[2] devices:beats; KEYS[3] started:<ch> (message id -> device, or
-- "<device>|alone" when no other task of its process runs beside it: a death then is its own)
-- ARGV[1] device name; ARGV[2] message id; ARGV[3] '1' when it runs alone.
local devices_seen, devices_beats, started = KEYS[1], KEYS[2], KEYS[3]
local device, message_id, alone = ARGV[1], ARGV[2], ARGV[3]
local now = redis_now()
redis.call('HSET', devices_seen, device, now)
redis.call('ZADD', devices_beats, now, device)
redis.call('HSET', started, message_id, alone == '1' and device .. '|alone' or device)
return 1
