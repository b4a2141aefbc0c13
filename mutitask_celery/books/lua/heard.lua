--! include clock
--! include wake
-- heard: a device lives (in Redis's clock); optionally, the messages it has just taken.
-- KEYS[1] devices:seen       name -> last heartbeat, as text (the reapers' fence compares it)
-- KEYS[2] devices:beats      name -> last heartbeat: who is alive or recently dead
-- KEYS[3] devices:done       name -> tasks it has finished
-- KEYS[4] devices:forgotten  name -> when the roster dropped it
-- KEYS[5] inhand:<device>    message id -> "tag|score|tasks|channel"
-- KEYS[6] unacked_index      kombu's: delivery tag -> when it was delivered
-- KEYS[7] held:<ch>          tasks of the channel in devices' hands (only with a message to note)
-- KEYS[8] notify:<ch>        the server's wake-up list, for when taking a message left the channel empty
-- KEYS[9] the channel's queue
-- ARGV[1] device name; then, to note a message just taken: ARGV[2] its id, ARGV[3] its
-- delivery tag, ARGV[4] its number of tasks, ARGV[5] its channel.
-- Returns the tasks the device has finished (it only ever grows: see integrity.py), or -1
-- when the roster had forgotten the device (its counts start afresh).
-- A delete first: a full Redis (maxmemory, noeviction) refuses a script whose first write would
-- grow memory, but not one that has written, so a device's heartbeat goes on while Redis is full
-- (a device silent then would have its tasks taken while it runs them).
local devices_seen, devices_beats, devices_done, devices_forgotten = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local inhand, unacked_index = KEYS[5], KEYS[6]
local device = ARGV[1]
local forgotten = redis.call('HDEL', devices_forgotten, device) == 1
local now = redis_now()
redis.call('HSET', devices_seen, device, now)
redis.call('ZADD', devices_beats, now, device)
-- The delivery's score tells it from a later delivery of the same message, which kombu
-- gives the same tag: a reaper acts only while the score is still the one noted here. With no
-- score kombu no longer holds the delivery (acknowledged: a call that Redis forgot in a restart
-- and that was made again after the message finished) or never recorded it (the sweep's to
-- find): a note of it would be stale at once, and would hold held:<ch> up for good.
local score = #ARGV >= 5 and redis.call('ZSCORE', unacked_index, ARGV[3])
if score then
  if redis.call('HSETNX', inhand, ARGV[2], ARGV[3] .. '|' .. score .. '|' .. ARGV[4] .. '|' .. ARGV[5]) == 1 then
    redis.call('INCRBY', KEYS[7], ARGV[4])
    -- The server refills as devices finish; if the channel ran dry, it should not wait for that.
    if redis.call('LLEN', KEYS[9]) == 0 then wake_server(KEYS[8]) end
  end
end
if forgotten then return -1 end
return tonumber(redis.call('HGET', devices_done, device) or '0')
