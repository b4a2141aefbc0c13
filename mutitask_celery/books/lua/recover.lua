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
-- KEYS[17..16+n] the dead-letter record of each task, in the order of ARGV[10..]
-- ARGV[1] device; ARGV[2] the heartbeat judged too old ('' when the device itself, or its next
--   life, acts: no fence); ARGV[3] message id; ARGV[4] the note as read ("tag|score");
-- ARGV[5] delivery tag; ARGV[6] the start mark as read ('' for none); ARGV[7] deaths that bury a
-- task; ARGV[8] channel; ARGV[9] n, the tasks in the message;
-- ARGV[10..9+n] their ids; then, not started: the message to queue again (a fresh delivery tag);
--   started: one message per task (flagged suspect), in the order of the ids.
-- Returns {status, deaths}: alive (heard from since it was judged: it keeps the message),
-- moved (someone else acted on the note), changed (started or not, it is not what the caller
-- read: read again), gone (acknowledged, or the tag now names a later delivery: the note was
-- stale), restored (back untouched, no death), suspects (each task back alone, one death each),
-- buried (its one task reached the deaths that make it a poison task, the last one while it ran
-- alone: dead-lettered). A task the device had claimed for its save function and marked saving
-- (claim.lua, claim_mark.lua) died while it was being saved: it may have been saved, so it never runs again by itself: it is
-- dead-lettered as 'worker lost while saving' (and its record keeps the claim, so that the
-- device's own late finish, if it was only frozen, replaces it by the success).
local device, judged, message_id, noted, tag = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if judged ~= '' and redis.call('HGET', KEYS[1], device) ~= judged then return {'alive', 0} end
if redis.call('HGET', KEYS[2], message_id) ~= noted then return {'moved', 0} end
local mark = redis.call('HGET', KEYS[6], message_id) or ''
if mark ~= ARGV[6] then return {'changed', 0} end
local alone = mark == device .. '|alone'
local started = alone or mark == device
drop_note(KEYS[2], KEYS[15], message_id, noted)
local noted_score = tonumber(string.match(noted, '^[^|]*|([^|]*)') or '')
local score = redis.call('ZSCORE', KEYS[4], tag)
if redis.call('HEXISTS', KEYS[3], tag) == 0 or not noted_score or not score or tonumber(score) ~= noted_score then
  return {'gone', 0}  -- compared as numbers: Redis versions write a score's text differently
end
redis.call('HDEL', KEYS[3], tag)
redis.call('ZREM', KEYS[4], tag)
local n = tonumber(ARGV[9])
if not started then
  redis.call('RPUSH', KEYS[5], ARGV[10 + n])
  return {'restored', 0}
end
redis.call('HDEL', KEYS[6], message_id)
local claim = device .. '|' .. message_id
local alive, most, buried = {}, 0, 0
for i = 1, n do
  local id = ARGV[9 + i]
  local value = redis.call('HGET', KEYS[16], id)
  local claimed = claim_base(value) == claim
  local saving = claimed and claim_saving(value)
  if claimed then redis.call('HDEL', KEYS[16], id) end
  if redis.call('HEXISTS', KEYS[8], id) == 1 then
    if saving then
      write_dead_letter(KEYS[16 + i], KEYS[11], KEYS[12], KEYS[13], KEYS[9], id, ARGV[8],
        redis.call('HGET', KEYS[8], id), LOST_WHILE_SAVING, '', device, '', redis_now(), claim)
      redis.call('HDEL', KEYS[8], id)
      redis.call('HDEL', KEYS[7], id)
      buried = buried + 1
    else
      local deaths = redis.call('HINCRBY', KEYS[7], id, 1)
      if deaths > most then most = deaths end
      alive[#alive + 1] = i
    end
  elseif saving and redis.call('EXISTS', KEYS[16 + i]) == 1 then
    redis.call('HSET', KEYS[16 + i], 'claim', claim)  -- it was replacing its burial: only it may still
  end
end
if buried > 0 then
  redis.call('HINCRBY', KEYS[10], 'failed', buried)
  wake_server(KEYS[14])
end
if #alive == 0 then return {buried > 0 and 'buried' or 'gone', most} end
if n == 1 and alone and most >= tonumber(ARGV[7]) then
  local id, now = ARGV[10], redis_now()
  local reason = 'worker lost: the device died while running it, ' .. most .. ' time(s)'
  write_dead_letter(KEYS[17], KEYS[11], KEYS[12], KEYS[13], KEYS[9], id, ARGV[8],
    redis.call('HGET', KEYS[8], id), reason, '', device, '', now, '')
  redis.call('HDEL', KEYS[8], id)
  redis.call('HDEL', KEYS[7], id)
  redis.call('HINCRBY', KEYS[10], 'failed', 1)
  wake_server(KEYS[14])
  return {'buried', most}
end
for _, i in ipairs(alive) do redis.call('RPUSH', KEYS[5], ARGV[9 + n + i]) end
return {'suspects', most}
