-- Shared by the steps that read claims:<ch> (claim.lua): a claim's value is "<device>|<message id>",
-- with '|saving' appended once the device has begun calling its save function on the results
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
