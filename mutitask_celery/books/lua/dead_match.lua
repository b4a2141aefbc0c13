-- Shared by reload.lua and delete.lua: what a filter (dead_filter.py) asks of a record that the
-- step acting on it judges itself, in the same step, so the judgement and the move are one: a
-- failure-time window (its end at the latest when the call began: a record failing again later
-- is the next call's), a device (a full name, or a short one: device2 is also device2@<host>),
-- a reason's substring or start ('sub', 'prefix'; a glob beyond 'text*' is judged by the caller,
-- which then names each record with its failure time as read: see reload.lua). An empty clause
-- asks nothing.

local function filter_of(since, up_to, device, reason_kind, reason)
  return {since = tonumber(since), up_to = tonumber(up_to), device = device, kind = reason_kind, reason = reason,
          short = device ~= '' and not string.find(device, '@', 1, true),
          asks = since ~= '' or up_to ~= '' or device ~= '' or reason_kind ~= ''}  -- false: holds for every record
end

local function filter_holds(flt, last_failed, device, reason)
  local t = tonumber(last_failed or '')
  if (flt.since or flt.up_to) and not t then return false end
  if flt.since and t < flt.since then return false end
  if flt.up_to and t > flt.up_to then return false end
  device, reason = device or '', reason or ''
  if flt.device ~= '' and device ~= flt.device
      and not (flt.short and string.sub(device, 1, #flt.device + 1) == flt.device .. '@') then
    return false
  end
  if flt.kind == 'sub' and not string.find(reason, flt.reason, 1, true) then return false end
  if flt.kind == 'prefix' and string.sub(reason, 1, #flt.reason) ~= flt.reason then return false end
  return true
end
