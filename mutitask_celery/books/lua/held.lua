--! include note
-- held: count again the tasks of a channel in devices' hands, from the devices' notes (held:<ch>
-- is their sum, kept by every step that writes or drops a note; this mends it if something
-- ever made it drift, e.g. a part of the books lost in a Redis restart).
-- KEYS[1] held:<ch>; KEYS[2] devices:beats (who may hold something: alive or recently dead);
-- KEYS[3..] inhand:<device> of each of those devices, in the order of ARGV[2..]
-- ARGV[1] the channel; ARGV[2..] the device names as read from devices:beats
-- Returns {the count before, the count now}, or {-1} when devices:beats changed since it was
-- read (the caller reads it again).
local held, devices_beats = KEYS[1], KEYS[2]
local channel = ARGV[1]
local names = redis.call('ZRANGE', devices_beats, 0, -1)
if #names ~= #ARGV - 1 then return {-1} end
local listed = {}
for i = 2, #ARGV do listed[ARGV[i]] = true end
for _, name in ipairs(names) do
  if not listed[name] then return {-1} end
end
local total = 0
for i = 3, #KEYS do
  local notes = redis.call('HVALS', KEYS[i])
  for _, note in ipairs(notes) do
    if string.match(note, '^[^|]*|[^|]*|%d+|(%d+)$') == channel then total = total + note_tasks(note) end
  end
end
local before = tonumber(redis.call('GET', held) or '0')
if before ~= total then redis.call('SET', held, total) end
return {before, total}
