-- take_tokens: a device may start ARGV[1] tasks of a channel now, or must wait. One budget
-- for all the channel's devices (GCRA: the channel's theoretical arrival time, TAT, moves
-- 1/limit s per task; a start is allowed when the TAT is not in the future), in Redis's
-- clock, so hosts' clocks do not matter. A TAT less than one interval behind is kept (a
-- device that asks a little late loses nothing); one further behind starts afresh from now
-- (an idle channel saves up no burst).
-- Without a limit it takes nothing and allows.
-- KEYS[1] rate_limits (hash channel -> tasks a second); KEYS[2] rate_tat (hash channel ->
-- TAT, microseconds of Redis's clock)
-- ARGV[1] tasks to start; ARGV[2] the channel
-- Returns {wait, limit}: microseconds to wait before asking again (0: taken), and the
-- limit in thousandths of a task a second (0: none).
local rate_limits, rate_tat = KEYS[1], KEYS[2]
local tasks, channel = ARGV[1], ARGV[2]
local limit = tonumber(redis.call('HGET', rate_limits, channel) or '')
if not limit or limit <= 0 then return {0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = 1000000 / limit
local tat = tonumber(redis.call('HGET', rate_tat, channel) or '0')
if tat < now - interval then tat = now end
if tat > now then return {math.ceil(tat - now), math.floor(limit * 1000)} end
redis.call('HSET', rate_tat, channel, string.format('%.0f', tat + tonumber(tasks) * interval))
return {0, math.floor(limit * 1000)}
