--! include note
-- drop_note: forget a device's note of a message, if it is still the one read (a note written
-- since, for a later delivery, stays); also its start mark, when asked and it is this device's
-- (the message goes back without an outcome: its next delivery is no death; a mark another
-- device wrote, its message handed back meanwhile and started there, stays).
-- KEYS[1] inhand:<device>; KEYS[2] held:<ch> of the note's channel; KEYS[3] started:<ch>
-- ARGV[1] message id; ARGV[2] the note as read ('' : whatever it is); ARGV[3] '1' to drop the
-- start mark too; ARGV[4] the device. Returns 1 if the note was dropped.
local inhand, held, started = KEYS[1], KEYS[2], KEYS[3]
local message_id, noted, drop_mark, device = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local dropped = drop_note(inhand, held, message_id, noted ~= '' and noted or nil)
if drop_mark == '1' then
  local mark = redis.call('HGET', started, message_id)
  if mark == device or mark == device .. '|alone' then redis.call('HDEL', started, message_id) end
end
return dropped and 1 or 0
