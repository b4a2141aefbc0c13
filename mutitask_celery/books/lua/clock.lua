-- Shared: Redis's clock as 'seconds.micros', the one clock every host's heartbeats and failure
-- times are written in (hosts' own clocks may disagree by more than dead_after).
local function redis_now()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
