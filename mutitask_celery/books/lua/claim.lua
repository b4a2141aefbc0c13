--! include dead_letter
--! include claims
-- claim: before a device calls a user's save function on results, it claims their tasks, so
-- that a save function is called at most once per task however many times the task ran (a
-- device taken for dead that was only frozen or cut off, a message delivered twice). A claim
-- stands until the claimer's finish step (finish.lua) or, if the claimer dies first, until a
-- reaper takes its message back and buries the task as 'worker lost while saving'
-- (recover.lua, settle.lua) if its claim was marked saving: it may have been saved, so it is
-- never saved again by itself; a claim not marked saving yet just ends, and the task runs again.
-- A device claims a task in the books only while it still holds the message (its note): a
-- message a reaper took back from it meanwhile is another run's now. Just before it calls its save
-- function it marks its claims saving (claim_mark.lua): only then may a death have saved them.
-- KEYS[1] pending:<ch>; KEYS[2] claims:<ch> (task id -> "<device>|<message id>|<run>[|saving]");
-- KEYS[3] inhand:<device>; KEYS[4..3+n] the dead-letter record of each task, in the order of the ids
-- ARGV[1] the claim, "<device>|<message id>|<run>"; ARGV[2] the message id; ARGV[3] '1' when the
-- device notes what it holds (else the note is not asked for); ARGV[4..3+n] the task ids.
-- Returns one code a task: 1 claimed (save it); 2 claimed to replace its burial as worker lost
-- (save it: finish.lua then replaces the record by the success); 0 finished already, or the
-- message is no longer this device's (do not save); -1 another run holds the claim (do not save).
local pending, claims, inhand = KEYS[1], KEYS[2], KEYS[3]
local claim, message_id, notes_holds = ARGV[1], ARGV[2], ARGV[3]
local out = {}
local holds = notes_holds ~= '1' or redis.call('HEXISTS', inhand, message_id) == 1
for i = 4, #ARGV do
  local id = ARGV[i]
  local held = redis.call('HGET', claims, id)
  local code = 0
  if held and claim_base(held) ~= claim then
    code = -1
  elseif redis.call('HEXISTS', pending, id) == 1 then
    code = holds and 1 or 0
  elseif revivable(KEYS[i], claim) then
    code = 2  -- no other run is under way: a buried task is in no message
  end
  if code > 0 and not held then redis.call('HSET', claims, id, claim) end  -- a claim made again stands as it is
  out[#out + 1] = code
end
return out
