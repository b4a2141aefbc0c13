--! include dead_letter
-- unpublishable: dead-letter an item a generator yielded that cannot travel (e.g. not
-- JSON-able), with the record written by dead_letter.lua like every other, and counted as
-- failed in the channel's books.
-- KEYS[1] the record; KEYS[2] dead index, all channels; KEYS[3] dead index of the channel;
-- KEYS[4] the set of channels with records; KEYS[5] meta:<ch> (reload history);
-- KEYS[6] stats:<ch>; KEYS[7] the dead-letter field index (dead_index.lua).
-- ARGV[1] the id; ARGV[2] the channel; ARGV[3] the item as text (codec JSON); ARGV[4] why.
-- Returns the failure time (Redis's clock).
local record, dead_index, dead_index_ch, dead_channels = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local meta, stats, dead_by_field = KEYS[5], KEYS[6], KEYS[7]
local task_id, channel, data, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = redis_now()
write_dead_letter(record, dead_index, dead_index_ch, dead_by_field, dead_channels, meta, task_id, channel, data,
                  reason, '', 'server', '', now)
redis.call('HINCRBY', stats, 'failed', 1)
return now
