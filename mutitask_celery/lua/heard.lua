--! include clock
-- heard: a device lives (in Redis's clock); optionally, the messages it has just taken.
-- KEYS[1] devices:seen       name -> last heartbeat, as text (the reapers' fence compares it)
-- KEYS[2] devices:beats      name -> last heartbeat: who is alive or recently dead
-- KEYS[3] devices:done       name -> tasks it has finished
-- KEYS[4] devices:forgotten  name -> when the roster dropped it
-- KEYS[5] inhand:<device>    message id -> "tag|score"
-- KEYS[6] unacked_index      kombu's: delivery tag -> when it was delivered
-- ARGV[1] device name; then (message id, delivery tag) pairs to note in hand.
-- Returns the tasks the device has finished (it only ever grows: see integrity.py), or -1
-- when the roster had forgotten the device (its counts start afresh).
local now = redis_now()
redis.call('HSET', KEYS[1], ARGV[1], now)
redis.call('ZADD', KEYS[2], now, ARGV[1])
for i = 2, #ARGV, 2 do
  -- The delivery's score tells it from a later delivery of the same message, which kombu
  -- gives the same tag: a reaper acts only while the score is still the one noted here.
  local score = redis.call('ZSCORE', KEYS[6], ARGV[i + 1]) or ''
  redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1] .. '|' .. score)
end
if redis.call('HDEL', KEYS[4], ARGV[1]) == 1 then return -1 end
return tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
