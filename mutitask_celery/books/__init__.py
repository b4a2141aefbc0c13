"""The books in Redis: the ledger of every channel, the dead-letter store, recovery of a dead
device's tasks, publishing task messages, and the Lua steps (``lua/``) that change them atomically.

The words the code and its comments use, in the order a task meets them:

- *books*: what Redis keeps about every task beside the queues (the ``mutitask:`` keys, see
  ``keys``), so that every task ends exactly once. The *ledger* (``ledger``) writes them.
- *step*: one atomic change of the books, a Lua script in ``lua/`` (``publish``, ``finish``,
  ``recover`` ...). A step carries an id, and a step sent again after its reply was lost
  applies once (its *writer*'s last step id is kept in ``steps:<writer>``).
- *outstanding*: published (or reloaded) and not finished yet: the task is in
  ``pending:<ch>``, with its data. *Waiting*: outstanding, on the queue, in nobody's hands;
  ``ChannelSize`` bounds those. *Held*: in a device's hands (``held:<ch>`` counts them).
- *backlog*: reloaded tasks waiting in the books (``backlog:<ch>``) until the channel has room.
- *journal*: on a broker other than the books' Redis, the tasks written in the books but not
  yet handed to that broker (``unsent:<ch>``); they are sent again if the publisher died.
- *by reference*: a big task's message names it; the device reads its data from the books.
  *Frame*: how the books keep a big task's arrays and bytes (``codec.encode_binary``).
- *note* (in hand): a device writes down each message it takes (``inhand:<device>``: its
  delivery tag and score), so a reaper knows what it held. *Start mark*: the device marks a
  message whose tasks it starts running (``started:<ch>``).
- *death*: a device died with a started message; each of its tasks is charged one. *Suspect*:
  a task that was running when its device died; it goes back alone, flagged, and runs
  *alone* (nothing beside it on that device, see ``device.isolation``).
- *reap*: a device silent for ``dead_after`` is dead; any process gives back what it held
  (``recovery.reaper.Reaper``). *Bury*: dead-letter a task that died ``max_attempts`` times (a poison
  task) as ``worker lost``. *Revived*: a buried task whose late success came after all.
- *sweep*: the server's last net: outstanding tasks on no queue, in no unacked entry, in no
  note (*strays*, *orphans*) are put back on their queue.
- *claim*: before a user's save function runs, the device claims the task in the books
  (``claims:<ch>``), so a task that ran twice is saved once.
- *fence*: a condition a step checks before it acts (the heartbeat a reaper judged, the note
  it read, a *lease*), so that of many processes acting at once exactly one does.
- *lease*: one holder at a time for a channel, a run or a device name, expiring unless renewed
  (``leases``). *Watermark*: the highest value of a counter of the books (tasks published,
  finished ...) that a process has seen; the books coming back lower mean that Redis lost
  data (``integrity``).
"""
