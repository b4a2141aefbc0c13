--! include dead_letter
--! include wake
--! include note
--! include claims
--! include cancelled
-- finish: record the outcomes of one message in one step: each task leaves the books and its
-- result is saved (default save function) or its dead-letter record written, and counted. A task
-- no longer in the books was finished before (a message delivered twice): counted as run twice,
-- unless it was buried as 'worker lost' while it was only slow to answer (frozen, cut off, a long
-- C call holding the GIL): its late success then replaces the burial ('revived'). A task another
-- run has claimed for its save function (claim.lua) is that run's to finish.
-- A retried call (its reply was lost) returns what the first one did and changes nothing.
-- KEYS[1] pending:<ch>; KEYS[2] meta:<ch>; KEYS[3] stats:<ch>; KEYS[4] notify:<ch>;
-- KEYS[5] ResultChannel<ch>; KEYS[6] dead index, all; KEYS[7] dead index of <ch>;
-- KEYS[8] channels with dead letters; KEYS[9] devices:done; KEYS[10] devices:seen;
-- KEYS[11] devices:beats; KEYS[12] inhand:<device>; KEYS[13] lost:<ch>; KEYS[14] started:<ch>;
-- KEYS[15] steps:<device>; KEYS[16] held:<ch>; KEYS[17] backlog:<ch>; KEYS[18] claims:<ch>;
-- KEYS[19] the dead-letter field index (dead_index.lua); KEYS[20..] the dead-letter record of
-- each outcome, in order.
-- ARGV[1] device; ARGV[2] channel; ARGV[3] message id ('' for none); ARGV[4] seconds the tasks
-- took; ARGV[5] step id; ARGV[6] the writer's field in steps:<device>; ARGV[7] the device's claim
-- ("<device>|<message id>|<run>", see claim.lua; '' when it saved nothing itself); ARGV[8..] per
-- outcome five values: 'ok', 'fail', 'skip' (it ran, but another run owns its outcome: counted as run
-- twice) or 'cancel' (its channel was cancelled before it started: it leaves the books, counted
-- cancelled), task id, result (JSON, '' for none), reason, traceback.
-- Returns {succeeded, failed, run twice, tasks the device has finished, reloaded tasks in the
-- channel's backlog (the device then feeds some in: a reload flows with no server running), then
-- the place (from 0) of each outcome counted as run twice (none when a retried call replies)}.
local pending, meta, stats, notify = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local results, dead_index, dead_index_ch, dead_channels = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local devices_done, devices_seen, devices_beats, inhand = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local lost, started, steps, held = KEYS[13], KEYS[14], KEYS[15], KEYS[16]
local backlog, claims, dead_by_field = KEYS[17], KEYS[18], KEYS[19]
local device, channel, message_id, busy = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local step, writer, claim = ARGV[5], ARGV[6], ARGV[7]
local last = redis.call('HGET', steps, writer)
if last then
  local id, a, b, c, d = string.match(last, '^([^|]*)|(%d+),(%d+),(%d+),(%d+)$')
  if id == step then return {tonumber(a), tonumber(b), tonumber(c), tonumber(d), redis.call('ZCARD', backlog)} end
end
local now = redis_now()
local ok, failed, dup, revived, cancelled, record = 0, 0, 0, 0, 0, 19
local twice = {}
for i = 8, #ARGV, 5 do
  local kind, id, result, reason, tb = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  record = record + 1
  local holder = redis.call('HGET', claims, id)
  -- whether it is still outstanding: its data is read only for a dead-letter record (copying a
  -- big task's data into the script for every finish cost Redis more than the rest of the step)
  local outstanding = redis.call('HEXISTS', pending, id) == 1
  if kind == 'cancel' then
    if outstanding and not holder and cancel_task(pending, meta, lost, id) then cancelled = cancelled + 1 end
  elseif kind == 'skip' or (holder and claim_base(holder) ~= claim) then
    dup = dup + 1
    twice[#twice + 1] = record - 20
  elseif outstanding then
    local data = nil
    if kind ~= 'ok' then data = redis.call('HGET', pending, id) end
    redis.call('HDEL', pending, id)
    redis.call('HDEL', lost, id)
    redis.call('HDEL', claims, id)
    if kind == 'ok' then
      redis.call('HDEL', meta, id)
      if result ~= '' then redis.call('RPUSH', results, result) end
      ok = ok + 1
    else
      write_dead_letter(KEYS[record], dead_index, dead_index_ch, dead_by_field, dead_channels, meta, id, channel,
        data, reason, tb, device, result, now, '')
      failed = failed + 1
    end
  elseif kind == 'ok' and revivable(KEYS[record], claim) then
    index_forget(dead_by_field, KEYS[record], id)
    redis.call('DEL', KEYS[record])
    redis.call('ZREM', dead_index, id)
    redis.call('ZREM', dead_index_ch, id)
    redis.call('HDEL', meta, id)
    redis.call('HDEL', lost, id)
    redis.call('HDEL', claims, id)
    if result ~= '' then redis.call('RPUSH', results, result) end
    ok = ok + 1
    revived = revived + 1
  else
    if holder and claim ~= '' then redis.call('HDEL', claims, id) end  -- its own claim: done with
    dup = dup + 1
    twice[#twice + 1] = record - 20
  end
end
if ok > 0 then redis.call('HINCRBY', stats, 'succeeded', ok) end
if failed > 0 then redis.call('HINCRBY', stats, 'failed', failed) end
if dup > 0 then redis.call('HINCRBY', stats, 'duplicates', dup) end
if revived > 0 then redis.call('HINCRBY', stats, 'revived', revived) end
if cancelled > 0 then redis.call('HINCRBY', stats, 'cancelled', cancelled) end
redis.call('HINCRBY', stats, 'messages', 1)
redis.call('HINCRBY', stats, 'timed', ok + failed + dup)
redis.call('HINCRBYFLOAT', stats, 'busy', busy)
local done = redis.call('HINCRBY', devices_done, device, ok + failed + dup)
if message_id ~= '' then
  drop_note(inhand, held, message_id)
  redis.call('HDEL', started, message_id)
end
redis.call('HSET', devices_seen, device, now)  -- finishing proves the device lives
redis.call('ZADD', devices_beats, now, device)
if ok + failed + cancelled > 0 then wake_server(notify) end
redis.call('HSET', steps, writer, step .. '|' .. ok .. ',' .. failed .. ',' .. dup .. ',' .. done)
return {ok, failed, dup, done, redis.call('ZCARD', backlog), unpack(twice)}
