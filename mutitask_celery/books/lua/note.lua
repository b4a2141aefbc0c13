-- Shared: a device's note of a message in its hands, "tag|score|tasks|channel", and how its
-- removal keeps held:<ch> (the tasks in devices' hands, which back-pressure subtracts) true.
local function note_tasks(note)
  return tonumber(string.match(note, '^[^|]*|[^|]*|(%d+)') or '0')
end

-- Removes the note of message_id from inhand if it is there (and, if given, still reads
-- expected); returns true if it was removed.
local function drop_note(inhand, held, message_id, expected)
  local note = redis.call('HGET', inhand, message_id)
  if not note or (expected and note ~= expected) then return false end
  redis.call('HDEL', inhand, message_id)
  local n = note_tasks(note)
  if n > 0 then redis.call('DECRBY', held, n) end
  return true
end
