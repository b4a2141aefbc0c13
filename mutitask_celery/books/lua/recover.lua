--! include dead_letter
--! include wake
--! include note
--! include claims
-- recover: take one message back from a device that died (or whose pool child died), deciding,
-- counting and acting in one step, so that of several reapers acting at once exactly one takes
-- the message back, and only that one counts a death.
-- KEYS[1]  devices:seen       the device's last heartbeat: the fence
-- KEYS[2]  inhand:<device>    the device's note of the message
-- KEYS[3]  unacked            kombu's delivered messages (tag -> message)
-- KEYS[4]  unacked_index      kombu's: tag -> when delivered
-- KEYS[5]  the message's queue
-- KEYS[6]  started:<ch>       message id -> the device that started it ("<device>|alone" when it ran
--                             with no other task of its process: a death then is its own)
-- KEYS[7]  lost:<ch>          task id -> deaths
-- KEYS[8]  pending:<ch>       the books
-- KEYS[9]  meta:<ch>
-- KEYS[10] stats:<ch>
-- KEYS[11] dead index, all channels
-- KEYS[12] dead index of the channel
-- KEYS[13] the set of channels with dead letters
-- KEYS[14] notify:<ch>
-- KEYS[15] held:<ch>         tasks in devices' hands (the note's leave it)
-- KEYS[16] claims:<ch>       task id -> the claim of a device whose save function is to run on it
-- KEYS[17] the dead-letter field index (dead_index.lua)
-- KEYS[18..17+n] the dead-letter record of each task, in the order of ARGV[11..]
-- ARGV[1] device; ARGV[2] the heartbeat judged too old ('' when the device itself, or its next
--   life, acts: no fence); ARGV[3] message id; ARGV[4] the note as read ("tag|score");
-- ARGV[5] delivery tag; ARGV[6] the start mark as read ('' for none); ARGV[7] deaths that bury a
-- task; ARGV[8] channel; ARGV[9] n, the tasks in the message; ARGV[10] '1' when the device
--   itself leaves (SIGTERM: it hands back what it holds; no death is charged, see leaving.py);
-- ARGV[11..10+n] their ids; then, not started: the message to queue again (a fresh delivery tag);
--   started: one message per task (flagged suspect unless the device leaves), in the order of the ids.
-- Returns {status, deaths}: alive (heard from since it was judged: it keeps the message),
-- moved (someone else acted on the note), changed (started or not, it is not what the caller
-- read: read again), gone (acknowledged, or the tag now names a later delivery: the note was
-- stale), restored (back untouched, no death), suspects (each task back alone, one death each),
-- buried (its one task reached the deaths that make it a poison task, the last one while it ran
-- alone: dead-lettered), handed (the device, leaving, gave its started message back: each task
-- back alone, no death). A task the device had claimed for its save function and marked saving
-- (claim.lua, claim_mark.lua) died while it was being saved: it may have been saved, so it never runs again by itself: it is
-- dead-lettered as 'worker lost while saving' (and its record keeps the claim, so that the
-- device's own late finish, if it was only frozen, replaces it by the success).
local devices_seen, inhand, unacked, unacked_index = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queue, started, lost, pending = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local meta, stats, dead_index, dead_index_ch = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local dead_channels, notify, held, claims = KEYS[13], KEYS[14], KEYS[15], KEYS[16]
local dead_by_field = KEYS[17]
local device, judged, message_id, noted = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local tag, mark_read, max_attempts, channel = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local tasks, leaving = ARGV[9], ARGV[10]
if judged ~= '' and redis.call('HGET', devices_seen, device) ~= judged then return {'alive', 0} end
if redis.call('HGET', inhand, message_id) ~= noted then return {'moved', 0} end
local mark = redis.call('HGET', started, message_id) or ''
if mark ~= mark_read then return {'changed', 0} end
local alone = mark == device .. '|alone'
local ran = alone or mark == device
drop_note(inhand, held, message_id, noted)
local noted_score = tonumber(string.match(noted, '^[^|]*|([^|]*)') or '')
local score = redis.call('ZSCORE', unacked_index, tag)
if redis.call('HEXISTS', unacked, tag) == 0 or not noted_score or not score or tonumber(score) ~= noted_score then
  return {'gone', 0}  -- compared as numbers: Redis versions write a score's text differently
end
redis.call('HDEL', unacked, tag)
redis.call('ZREM', unacked_index, tag)
local n = tonumber(tasks)
if not ran then
  redis.call('RPUSH', queue, ARGV[11 + n])
  return {'restored', 0}
end
redis.call('HDEL', started, message_id)
local holder = device .. '|' .. message_id
local alive, most, buried = {}, 0, 0
for i = 1, n do
  local id = ARGV[10 + i]
  local value = redis.call('HGET', claims, id)
  local claim = claim_base(value)
  local claimed = claim_holder(claim) == holder
  local saving = claimed and claim_saving(value)
  if claimed then redis.call('HDEL', claims, id) end
  if redis.call('HEXISTS', pending, id) == 1 then
    if saving then
      write_dead_letter(KEYS[17 + i], dead_index, dead_index_ch, dead_by_field, dead_channels, meta, id, channel,
        redis.call('HGET', pending, id), LOST_WHILE_SAVING, '', device, '', redis_now(), claim)
      redis.call('HDEL', pending, id)
      redis.call('HDEL', lost, id)
      buried = buried + 1
    elseif leaving == '1' then
      alive[#alive + 1] = i  -- back without a death: its device was told to leave, it did not die
    else
      local deaths = redis.call('HINCRBY', lost, id, 1)
      if deaths > most then most = deaths end
      alive[#alive + 1] = i
    end
  elseif saving and redis.call('EXISTS', KEYS[17 + i]) == 1 then
    redis.call('HSET', KEYS[17 + i], 'claim', claim)  -- it was replacing its burial: only it may still
  end
end
if buried > 0 then
  redis.call('HINCRBY', stats, 'failed', buried)
  wake_server(notify)
end
if #alive == 0 then return {buried > 0 and 'buried' or 'gone', most} end
if n == 1 and alone and most >= tonumber(max_attempts) then
  local id, now = ARGV[11], redis_now()
  local reason = 'worker lost: the device died while running it, ' .. most .. ' time(s)'
  write_dead_letter(KEYS[18], dead_index, dead_index_ch, dead_by_field, dead_channels, meta, id, channel,
    redis.call('HGET', pending, id), reason, '', device, '', now, '')
  redis.call('HDEL', pending, id)
  redis.call('HDEL', lost, id)
  redis.call('HINCRBY', stats, 'failed', 1)
  wake_server(notify)
  return {'buried', most}
end
for _, i in ipairs(alive) do redis.call('RPUSH', queue, ARGV[10 + n + i]) end
if leaving == '1' then return {'handed', 0} end
return {'suspects', most}
