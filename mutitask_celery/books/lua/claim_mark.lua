--! include claims
-- claim_mark: a device that claimed tasks (claim.lua) says it begins calling its save function on
-- their results ('saving'): from now on a death may have saved them; or, before any save, gives
-- its claims up ('release': the message goes back, its tasks run again elsewhere).
-- KEYS[1] claims:<ch> (task id -> "<device>|<message id>|<run>[|saving]")
-- ARGV[1] the claim, "<device>|<message id>|<run>"; ARGV[2] 'saving' or 'release'; ARGV[3..] task ids.
-- Returns the ids it marked or gave up: only the caller's own. For 'saving', those it marked
-- before too (a mark repeated after its reply was lost): the caller saves exactly these. A
-- claim that is gone (a reaper took the device for dead and gave its message back) is not
-- among them: its task runs again elsewhere, and is saved there.
local claims = KEYS[1]
local claim, mark = ARGV[1], ARGV[2]
local done = {}
for i = 3, #ARGV do
  local value = redis.call('HGET', claims, ARGV[i])
  if value == claim then
    if mark == 'saving' then
      redis.call('HSET', claims, ARGV[i], claim .. SAVING)
    else
      redis.call('HDEL', claims, ARGV[i])
    end
    done[#done + 1] = ARGV[i]
  elseif mark == 'saving' and value == claim .. SAVING then
    done[#done + 1] = ARGV[i]
  end
end
return done
