-- Shared by lease_keep.lua and publish.lua: whether the holder whose value is given still holds
-- a lease, renewing it if so. lease: the lease (a string that expires); holders: the hash lease
-- key -> its last taker ('' once released); value: the holder's value (its token within);
-- ttl: milliseconds. A lease that merely lapsed (its holder was frozen or cut off, or Redis was
-- away, longer than the lease lasts) is taken back when nobody took it since: its last taker is
-- this holder, or that note is gone with the rest of Redis's data (the books' integrity checks
-- stop the process then, see books/integrity.py). One another process took, or that its holder
-- released, is lost.

local function lease_kept(lease, holders, value, ttl)
  local held = redis.call('GET', lease)
  if held == value then
    redis.call('PEXPIRE', lease, ttl)
    return true
  end
  if held then return false end
  local last = redis.call('HGET', holders, lease)
  if last and last ~= value then return false end
  redis.call('SET', lease, value, 'PX', ttl)
  redis.call('HSET', holders, lease, value)
  return true
end
