-- Shared: wake the server, which blocks on notify:<ch> between rounds (a task finished, or a
-- message was taken and there is room in the channel). One token is all it needs, and all it
-- gets: a burst of events while it works must not make it run a round for each.
local function wake_server(notify)
  redis.call('LPUSH', notify, '1')
  redis.call('LTRIM', notify, 0, 0)
end
