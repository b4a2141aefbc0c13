"""Every Redis key and Celery queue name the package uses, in one place.

The three legacy names (``channel<N>`` as the queue that replaced
``TaskChannel<N>``, and ``ResultChannel<N>``) stay as users know them;
everything else lives under the ``mutitask:`` prefix so one ``SCAN`` finds it
and nothing collides with a user's own keys.

Layout (``<ch>`` is a channel number, ``<id>`` a task id):

==============================  ====================================================
``channel<ch>``                 Celery queue of the channel (a list on a Redis broker)
``ResultChannel<ch>``           list of JSON results written by the default save function
``mutitask:pending:<ch>``       hash id -> task data: published and not yet finished
``mutitask:meta:<ch>``          hash id -> "failures|first_failed" for reloaded tasks
``mutitask:stats:<ch>``         hash of counters: published, succeeded, failed, ...
``mutitask:notify:<ch>``        short list a device pushes to when a task finishes
``mutitask:dead:index``         sorted set id -> last failure time, all channels
``mutitask:dead:index:<ch>``    sorted set id -> last failure time, one channel
``mutitask:dead:rec:<id>``      hash: one dead-letter record
``mutitask:dead:channels``      set of channels that have ever had a record
``mutitask:dead:dropped``       hash channel -> records dropped by the retention limits
``mutitask:devices:expected``   how many devices the run expects (device1..deviceN)
``mutitask:devices:wanted``     hash device name (or ``*``) -> wanted state (running/paused)
``mutitask:devices:info``       hash device name -> JSON: channels, host, pid, start time
``mutitask:devices:seen``       hash device name -> last time it was heard from (Redis's clock, as text)
``mutitask:devices:beats``      sorted set device name -> that time: alive or recently dead devices only
``mutitask:devices:forgotten``  hash device name -> when it was dropped from the roster (silent too long)
``mutitask:devices:done``       hash device name -> tasks it has finished
``mutitask:devices:leaving``    hash device name -> ``stopping`` (its warm shutdown has begun) or ``stopped``
                                (it ended); cleared when it starts again
``mutitask:inhand:<device>``    hash message id -> "tag|score|tasks|channel": the delivery in its
                                hands (kombu's delivery tag and its ``unacked_index`` score, which tells
                                deliveries apart)
``mutitask:started:<ch>``       hash message id -> device: messages whose tasks a device started running
``mutitask:claims:<ch>``        hash task id -> "<device>|<message id>": a device calls its save function on
                                the task's result (at most once a task: see lua/claim.lua)
``mutitask:held:<ch>``          tasks of the channel in devices' hands (the sum over their notes)
``mutitask:backlog:<ch>``       sorted set id -> time: reloaded tasks in the books, fed into the channel as
                                devices make room (a reload never floods a channel)
``mutitask:channel_sizes``      hash channel -> the ChannelSize its server runs it with (default 50)
``mutitask:run:<name>``         hash: a resumable run's record (items taken per generator, see books.runs)
``mutitask:rate_limits``        hash channel -> tasks a second all its devices may start together
``mutitask:rate_tat``           hash channel -> when (Redis's clock, µs) its next task may start
``mutitask:sweep:due``          counter: a device died or restarted, so the server sweeps (see recovery)
``mutitask:steps:<writer>``     hash slot -> its last step id and result: a retried step applies once
``mutitask:lost:<ch>``          hash task id -> times a device died holding it
``mutitask:lease:<what>``       a lease: its holder (host, pid, token, since), expiring unless renewed
                                (see books.leases); ``<what>`` is ``device:<device>`` (one process per
                                device name), ``channel:<ch>`` or ``run:<name>`` (one server per channel, run)
``mutitask:lease:holders``      hash lease key -> its last taker ('' once released): may a lapsed lease be
                                taken back by its holder (nobody took it since)
``mutitask:unsent:<ch>``        sorted set id -> time: in the books, not yet handed to another broker
``mutitask:probe:room``         never written: ``SET ... XX`` on it changes nothing, yet a full Redis
                                refuses it like every write (see :mod:`.memory`)
``unacked``, ``unacked_index``  kombu's own: delivered messages not yet acknowledged
==============================  ====================================================

On a Redis Cluster (see :func:`use_cluster_layout`) every name above but the queue's
carries the hash tag ``{books}``: ``mutitask:{books}:pending:<ch>``,
``ResultChannel<ch>{books}``, so that each Lua step's keys hash to one slot.
"""

from __future__ import annotations

PLAIN_PREFIX = "mutitask"
CLUSTER_TAG = "{books}"  # the hash tag every key shares on a Redis Cluster (one slot)
QUEUE_PREFIX = "channel"
RESULTS_PREFIX = "ResultChannel"
PREFIX = PLAIN_PREFIX
PENDING_PREFIX = META_PREFIX = STATS_PREFIX = DEAD_INDEX = DEAD_CHANNELS = DEAD_RECORD_PREFIX = ""
DEAD_DROPPED = DEVICES_EXPECTED = DEVICES_WANTED = DEVICES_INFO = DEVICES_SEEN = DEVICES_DONE = ""
DEVICES_BEATS = DEVICES_FORGOTTEN = DEVICES_LEAVING = SWEEP_DUE = CHANNEL_SIZES = INHAND_PREFIX = LOST_PREFIX = ""
UNSENT_PREFIX = RESULTS_TAG = RATE_LIMITS = RATE_TAT = LEASE_HOLDERS = ""


def use_cluster_layout(cluster: bool) -> None:
    """Name every key for a Redis Cluster (``cluster=True``) or for one Redis server.

    Why: a cluster runs a Lua step only when all its keys hash to one slot, and a step
    spans a channel's books, the dead-letter index and a device's note together; so on a
    cluster every key carries the hash tag :data:`CLUSTER_TAG` (``mutitask:{books}:...``,
    ``ResultChannel<ch>{books}``) and the books live in one slot. On one server the names
    stay those above, so the books of a running deployment keep their names. The layout is
    the Redis's, not the caller's: :mod:`.runtime` picks it when it connects (``INFO``).
    """
    global PREFIX, PENDING_PREFIX, META_PREFIX, STATS_PREFIX, DEAD_INDEX, DEAD_CHANNELS
    global DEAD_RECORD_PREFIX, DEAD_DROPPED, DEVICES_EXPECTED, DEVICES_WANTED, DEVICES_INFO
    global DEVICES_SEEN, DEVICES_DONE, DEVICES_BEATS, DEVICES_FORGOTTEN, DEVICES_LEAVING, SWEEP_DUE
    global CHANNEL_SIZES, INHAND_PREFIX, LOST_PREFIX, UNSENT_PREFIX, RESULTS_TAG
    global KOMBU_UNACKED, KOMBU_UNACKED_INDEX, RATE_LIMITS, RATE_TAT, LEASE_HOLDERS
    PREFIX = f"{PLAIN_PREFIX}:{CLUSTER_TAG}" if cluster else PLAIN_PREFIX
    RESULTS_TAG = CLUSTER_TAG if cluster else ""
    PENDING_PREFIX = f"{PREFIX}:pending:"
    META_PREFIX = f"{PREFIX}:meta:"
    STATS_PREFIX = f"{PREFIX}:stats:"
    DEAD_INDEX = f"{PREFIX}:dead:index"
    DEAD_CHANNELS = f"{PREFIX}:dead:channels"
    DEAD_RECORD_PREFIX = f"{PREFIX}:dead:rec:"
    DEAD_DROPPED = f"{PREFIX}:dead:dropped"
    DEVICES_EXPECTED = f"{PREFIX}:devices:expected"
    DEVICES_WANTED = f"{PREFIX}:devices:wanted"
    DEVICES_INFO = f"{PREFIX}:devices:info"
    DEVICES_SEEN = f"{PREFIX}:devices:seen"
    DEVICES_DONE = f"{PREFIX}:devices:done"
    DEVICES_BEATS = f"{PREFIX}:devices:beats"
    DEVICES_FORGOTTEN = f"{PREFIX}:devices:forgotten"
    DEVICES_LEAVING = f"{PREFIX}:devices:leaving"
    SWEEP_DUE = f"{PREFIX}:sweep:due"
    CHANNEL_SIZES = f"{PREFIX}:channel_sizes"
    RATE_LIMITS = f"{PREFIX}:rate_limits"
    RATE_TAT = f"{PREFIX}:rate_tat"
    LEASE_HOLDERS = f"{PREFIX}:lease:holders"
    INHAND_PREFIX = f"{PREFIX}:inhand:"
    LOST_PREFIX = f"{PREFIX}:lost:"
    UNSENT_PREFIX = f"{PREFIX}:unsent:"
    KOMBU_UNACKED = f"{PREFIX}:no-kombu:unacked" if cluster else "unacked"
    KOMBU_UNACKED_INDEX = f"{PREFIX}:no-kombu:unacked_index" if cluster else "unacked_index"


def cluster_layout() -> bool:
    """True while keys are named for a Redis Cluster (see :func:`use_cluster_layout`)."""
    return PREFIX != PLAIN_PREFIX


use_cluster_layout(False)
ALL_DEVICES = "*"  # the field of DEVICES_WANTED that applies to every device
INHAND_PREFIX = f"{PREFIX}:inhand:"
LOST_PREFIX = f"{PREFIX}:lost:"
UNSENT_PREFIX = f"{PREFIX}:unsent:"
# kombu's Redis transport keeps delivered, not yet acked messages here (its defaults).
# kombu cannot use a Redis Cluster, so in the cluster layout these (and a queue's list,
# :func:`queue_list`) are names in the books' slot that no step touches: a step that
# declares them on a broker of one's own still hashes to one slot.
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"


def queue(channel: int) -> str:
    """Celery queue of a channel (what ``celery worker -Q`` names)."""
    return f"{QUEUE_PREFIX}{channel}"


def queue_list(channel: int) -> str:
    """The list kombu keeps for the channel's queue on a Redis broker, as a step's KEYS
    entry (in the cluster layout a name no step touches: see :data:`KOMBU_UNACKED`)."""
    return f"{PREFIX}:no-kombu:{queue(channel)}" if cluster_layout() else queue(channel)


def results(channel: int) -> str:
    """The legacy result list the default save function appends to."""
    return f"{RESULTS_PREFIX}{channel}{RESULTS_TAG}"


def pending(channel: int) -> str:
    return f"{PENDING_PREFIX}{channel}"


def meta(channel: int) -> str:
    return f"{META_PREFIX}{channel}"


def stats(channel: int) -> str:
    return f"{STATS_PREFIX}{channel}"


def notify(channel: int) -> str:
    return f"{PREFIX}:notify:{channel}"


def dead_index(channel: int | None = None) -> str:
    return DEAD_INDEX if channel is None else f"{DEAD_INDEX}:{channel}"


def dead_record(task_id: str) -> str:
    return f"{DEAD_RECORD_PREFIX}{task_id}"


def inhand(device: str) -> str:
    return f"{INHAND_PREFIX}{device}"


def lost(channel: int) -> str:
    return f"{LOST_PREFIX}{channel}"


def backlog(channel: int) -> str:
    """Reloaded tasks of the channel, in the books, waiting for room in the channel."""
    return f"{PREFIX}:backlog:{channel}"


def claims(channel: int) -> str:
    """Tasks of the channel whose result a device's save function is saving: claimed first, so
    that a task that ran twice is saved once (see ``lua/claim.lua``)."""
    return f"{PREFIX}:claims:{channel}"


def held(channel: int) -> str:
    """How many tasks of the channel devices hold (taken off the queue, not finished): the
    server's back-pressure counts only the tasks still waiting in the channel."""
    return f"{PREFIX}:held:{channel}"


def started(channel: int) -> str:
    """Messages of the channel whose tasks a device has started: only those are charged a death."""
    return f"{PREFIX}:started:{channel}"


def unsent(channel: int) -> str:
    """The journal of a broker other than this Redis: tasks entered in the books whose
    message the broker has not confirmed yet (see :meth:`.Redeliveries.resend_unsent`)."""
    return f"{UNSENT_PREFIX}{channel}"


def run(name: str) -> str:
    """The record of a resumable run (see :mod:`.books.runs`)."""
    return f"{PREFIX}:run:{name}"


def steps(writer: str) -> str:
    """Last step of each slot (thread) of a writer (a device, the server of a channel):
    a call repeated after a lost reply is recognised and not applied again."""
    return f"{PREFIX}:steps:{writer}"


def device_lease(name: str) -> str:
    """The lease of a device's name: one process at a time works as ``name`` (see :mod:`.books.leases`)."""
    return f"{PREFIX}:lease:device:{name}"


def channel_lease(channel: int) -> str:
    """The lease of the server that feeds a channel: one server per channel at a time."""
    return f"{PREFIX}:lease:channel:{channel}"


def run_lease(name: str) -> str:
    """The lease of the server that runs a named (resumable) run: one server per run at a time."""
    return f"{PREFIX}:lease:run:{name}"


def room_probe() -> str:
    """A key never written, for :func:`.memory.has_room`: ``SET`` with ``XX`` on it is a write
    that changes nothing, which a Redis at ``maxmemory`` refuses like any other."""
    return f"{PREFIX}:probe:room"
