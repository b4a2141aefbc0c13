--! include wake
--! include cancelled
-- drop_cancelled: tasks of a cancelled channel that never started (in messages taken off its
-- queue by the canceller, or handed to a device that will not start them) leave the books as
-- cancelled: counted, never run, not dead letters. A task a save function is saving (its
-- claim) stays: the run that claimed it finishes it.
-- KEYS[1] pending:<ch>; KEYS[2] meta:<ch>; KEYS[3] lost:<ch>; KEYS[4] claims:<ch>;
-- KEYS[5] stats:<ch>; KEYS[6] notify:<ch>
-- ARGV[1..] the task ids.
-- Returns how many it cancelled (those still outstanding).
local pending, meta, lost, claims = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local stats, notify = KEYS[5], KEYS[6]
local n = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  if redis.call('HEXISTS', claims, id) == 0 and cancel_task(pending, meta, lost, id) then n = n + 1 end
end
count_cancelled(stats, notify, n)
return n
