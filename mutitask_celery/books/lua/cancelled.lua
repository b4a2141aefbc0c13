-- Shared by the steps that take a cancelled channel's unstarted tasks out of the books
-- (cancel.lua, drop_cancelled.lua, finish.lua's 'cancel' outcomes; see books/cancels.py): a task
-- leaves pending:<ch> with what the books keep beside it, never run, and is counted cancelled.
-- A step that calls count_cancelled includes wake too.

-- Takes the task out of the books; true when it was still outstanding (now cancelled).
local function cancel_task(pending, meta, lost, id)
  if redis.call('HDEL', pending, id) == 0 then return false end
  redis.call('HDEL', meta, id)
  redis.call('HDEL', lost, id)
  return true
end

-- Counts n tasks cancelled in stats:<ch>, and wakes the server (its run may be over).
local function count_cancelled(stats, notify, n)
  if n > 0 then
    redis.call('HINCRBY', stats, 'cancelled', n)
    wake_server(notify)
  end
end
