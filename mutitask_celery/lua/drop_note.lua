-- drop_note: forget a device's note of a message, if it is still the one read (a note written
-- since, for a later delivery, stays).
-- KEYS[1] inhand:<device>; ARGV[1] message id; ARGV[2] the note as read. Returns 1 if dropped.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
