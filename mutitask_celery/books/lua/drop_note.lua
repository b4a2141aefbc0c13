--! include note
-- drop_note: forget a device's note of a message, if it is still the one read (a note written
-- since, for a later delivery, stays); also its start mark, when asked (the message goes back
-- without an outcome: its next delivery is no death).
-- KEYS[1] inhand:<device>; KEYS[2] held:<ch> of the note's channel; KEYS[3] started:<ch>
-- ARGV[1] message id; ARGV[2] the note as read ('' : whatever it is); ARGV[3] '1' to drop the
-- start mark too. Returns 1 if the note was dropped.
local dropped = drop_note(KEYS[1], KEYS[2], ARGV[1], ARGV[2] ~= '' and ARGV[2] or nil)
if ARGV[3] == '1' then redis.call('HDEL', KEYS[3], ARGV[1]) end
return dropped and 1 or 0
