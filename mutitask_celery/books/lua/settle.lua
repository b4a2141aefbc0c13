-- settle: on a broker that redelivers by itself (RabbitMQ), count deaths from its redeliveries.
-- A redelivered message whose tasks a device had started (its start mark is still there: that
-- device died, or its pool child did, before finishing) costs each of its tasks one death; a
-- message only held, or given back without an outcome (which clears the mark), costs none.
-- KEYS[1] pending:<ch>; KEYS[2] lost:<ch> (task id -> deaths); KEYS[3] started:<ch>
-- ARGV[1] message id; ARGV[2..] its task ids.
-- Returns 1 if the device that started it ran it alone (a death then is its own), else 0;
-- then per task: -1 when no longer outstanding, else its deaths so far.
local mark = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local out = {(mark and string.sub(mark, -6) == '|alone') and 1 or 0}
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], id) == 0 then
    out[#out + 1] = -1
  elseif mark then
    out[#out + 1] = redis.call('HINCRBY', KEYS[2], id, 1)
  else
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[2], id) or '0')
  end
end
return out
