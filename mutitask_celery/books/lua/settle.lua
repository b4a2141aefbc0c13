--! include dead_letter
--! include wake
--! include claims
-- settle: on a broker that redelivers by itself (RabbitMQ), count deaths from its redeliveries.
-- A redelivered message whose tasks a device had started (its start mark is still there: that
-- device died, or its pool child did, before finishing) costs each of its tasks one death; a
-- message only held, or given back without an outcome (which clears the mark), costs none.
-- A task an earlier delivery of the message had claimed for its save function and marked saving
-- (claim.lua, claim_mark.lua) died while being saved: dead-lettered as 'worker lost while saving',
-- never run again by itself.
-- KEYS[1] pending:<ch>; KEYS[2] lost:<ch> (task id -> deaths); KEYS[3] started:<ch>;
-- KEYS[4] claims:<ch>; KEYS[5] meta:<ch>; KEYS[6] stats:<ch>; KEYS[7] dead index, all;
-- KEYS[8] dead index of <ch>; KEYS[9] channels with dead letters; KEYS[10] notify:<ch>;
-- KEYS[11] the dead-letter field index (dead_index.lua);
-- KEYS[12..11+n] the dead-letter record of each task, in the order of the ids
-- ARGV[1] message id; ARGV[2] the channel; ARGV[3..2+n] its task ids.
-- Returns 1 if the device that started it ran it alone (a death then is its own), else 0;
-- then per task: -1 when no longer outstanding (or buried here), else its deaths so far.
local pending, lost, started, claims = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local meta, stats, dead_index, dead_index_ch = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local dead_channels, notify, dead_by_field = KEYS[9], KEYS[10], KEYS[11]
local message_id, channel = ARGV[1], ARGV[2]
local mark = redis.call('HGET', started, message_id)
redis.call('HDEL', started, message_id)
local out, buried = {(mark and string.sub(mark, -6) == '|alone') and 1 or 0}, 0
local suffix = '|' .. message_id
for i = 3, #ARGV do
  local id = ARGV[i]
  local value = redis.call('HGET', claims, id)
  local claim = claim_base(value)
  local holder = claim_holder(claim)
  local claimed = holder and string.sub(holder, -#suffix) == suffix
  local saving = claimed and claim_saving(value)
  if claimed then redis.call('HDEL', claims, id) end
  if redis.call('HEXISTS', pending, id) == 0 then
    if saving and redis.call('EXISTS', KEYS[9 + i]) == 1 then redis.call('HSET', KEYS[9 + i], 'claim', claim) end
    out[#out + 1] = -1
  elseif saving then
    local device = string.sub(holder, 1, #holder - #suffix)
    write_dead_letter(KEYS[9 + i], dead_index, dead_index_ch, dead_by_field, dead_channels, meta, id, channel,
      redis.call('HGET', pending, id), LOST_WHILE_SAVING, '', device, '', redis_now(), claim)
    redis.call('HDEL', pending, id)
    redis.call('HDEL', lost, id)
    buried = buried + 1
    out[#out + 1] = -1
  elseif mark then
    out[#out + 1] = redis.call('HINCRBY', lost, id, 1)
  else
    out[#out + 1] = tonumber(redis.call('HGET', lost, id) or '0')
  end
end
if buried > 0 then
  redis.call('HINCRBY', stats, 'failed', buried)
  wake_server(notify)
end
return out
