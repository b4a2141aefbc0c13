-- Shared by the steps that read claims:<ch> (claim.lua): a claim's value is
-- "<device>|<message id>|<run>" (<run>: one run of the message on the device; the same message
-- can reach one device twice, after a failover, and each run claims apart), with '|saving' appended once the device has begun calling its save function on the results
-- (claim_mark.lua). Only a claim marked saving can have been saved: a device that dies before
-- that mark saved nothing, and its tasks may simply run again.
local SAVING = '|saving'

-- The claim without its saving mark (false for none).
local function claim_base(value)
  if value and string.sub(value, -#SAVING) == SAVING then return string.sub(value, 1, #value - #SAVING) end
  return value
end

-- True when the claim is marked saving.
local function claim_saving(value)
  return value and string.sub(value, -#SAVING) == SAVING or false
end

-- "<device>|<message id>" of a claim (its saving mark already taken off): whose message it is,
-- whichever run of it made the claim. A device taken for dead loses the claims of every run.
local function claim_holder(claim)
  return claim and string.match(claim, '^(.*)|[^|]*$') or false
end
