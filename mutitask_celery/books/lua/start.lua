--! include clock
-- start: a device starts running the tasks of a message. Only started messages are charged a
-- death when their device dies; starting is a heartbeat too, so a reaper that judged the
-- device dead before this step leaves the message alone (its fence is the heartbeat).
-- KEYS[1] devices:seen; KEYS[2] devices:beats; KEYS[3] started:<ch> (message id -> device, or
-- "<device>|alone" when no other task of its process runs beside them: a death then is its own);
-- KEYS[4] inhand:<device>
-- ARGV[1] device name; ARGV[2] message id; ARGV[3] '1' when it runs alone; ARGV[4] '1' to start
-- only while the device notes the message in hand (a prefork child: its device, leaving, may
-- have handed the message back meanwhile, see device/leaving.py; this step and that one are
-- each atomic, so the message either starts here or goes back, never both).
-- Returns 1 when started, 0 when the note is gone (nothing written).
local devices_seen, devices_beats, started, inhand = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local device, message_id, alone, noted_only = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if noted_only == '1' and redis.call('HEXISTS', inhand, message_id) == 0 then return 0 end
local now = redis_now()
redis.call('HSET', devices_seen, device, now)
redis.call('ZADD', devices_beats, now, device)
redis.call('HSET', started, message_id, alone == '1' and device .. '|alone' or device)
return 1
