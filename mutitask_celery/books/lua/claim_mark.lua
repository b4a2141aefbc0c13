--! include claims
-- claim_mark: a device that claimed tasks (claim.lua) says it begins calling its save function on
-- their results ('saving'): from now on a death may have saved them; or, before any save, gives
-- its claims up ('release': the message goes back, its tasks run again elsewhere).
-- KEYS[1] claims:<ch> (task id -> "<device>|<message id>[|saving]")
-- ARGV[1] the claim, "<device>|<message id>"; ARGV[2] 'saving' or 'release'; ARGV[3..] task ids.
-- Returns how many claims it marked or gave up (only the caller's own, not marked saving yet).
local n = 0
for i = 3, #ARGV do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if value == ARGV[1] then
    if ARGV[2] == 'saving' then
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[1] .. SAVING)
    else
      redis.call('HDEL', KEYS[1], ARGV[i])
    end
    n = n + 1
  end
end
return n
