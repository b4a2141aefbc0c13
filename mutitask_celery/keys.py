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
``mutitask:dead:by_field``      sorted set (scores 0) of "<field>\\0<value>\\0<id>": the records by reason and
                                device, for the filters (see books.records.index_range, lua/dead_index.lua)
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
``mutitask:claims:<ch>``        hash task id -> "<device>|<message id>|<run>": a device calls its save function on
                                the task's result (at most once a task: see lua/claim.lua)
``mutitask:held:<ch>``          tasks of the channel in devices' hands (the sum over their notes)
``mutitask:backlog:<ch>``       sorted set id -> time: reloaded tasks in the books, fed into the channel as
                                devices make room (a reload never floods a channel)
``mutitask:channel_sizes``      hash channel -> the ChannelSize its server runs it with (default 50)
``mutitask:cancelled``          hash channel -> when it was cancelled (``mutitask cancel``): its server takes
                                no more tasks, devices start none; cleared when a server starts it again
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

On a Redis Cluster every name above but the queue's carries the hash tag ``{books}``:
``mutitask:{books}:pending:<ch>``, ``ResultChannel<ch>{books}``, so that each Lua step's keys
hash to one slot.

A *key prefix* (the ``key_prefix`` setting, ``''`` by default) goes in front of every name,
kombu's included (kombu's ``global_keyprefix``): two deployments that share one Redis then
see nothing of each other. Celery's queue names stay ``channel<ch>``.

The names are one frozen :class:`Keys`, built once for the Redis at hand
(:func:`mutitask_celery.runtime.keys`) and handed to what reads or writes the books. The
module-level functions below name the keys of the default layout (no prefix, one server):
tests and tools use them; the package's own code asks its ``Keys``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PLAIN_PREFIX = "mutitask"
CLUSTER_TAG = "{books}"  # the hash tag every key shares on a Redis Cluster (one slot)
QUEUE_PREFIX = "channel"
RESULTS_PREFIX = "ResultChannel"
ALL_DEVICES = "*"  # the field of devices:wanted that applies to every device
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]*$")  # no braces: a hash tag would split the books' slot


def queue(channel: int) -> str:
    """Celery queue of a channel (what ``celery worker -Q`` names); the same in every layout."""
    return f"{QUEUE_PREFIX}{channel}"


@dataclass(frozen=True)
class Keys:
    """Every key name of one deployment on one Redis (see the module docstring).

    ``prefix``: the deployment's own prefix (``''``: none); ``cluster``: the Redis is a
    Redis Cluster, so every name carries :data:`CLUSTER_TAG`. Why a cluster needs it: a
    cluster runs a Lua step only when all its keys hash to one slot, and a step spans a
    channel's books, the dead-letter index and a device's note together.
    """

    prefix: str = ""
    cluster: bool = False
    base: str = field(init=False)  # what every name of ours starts with

    def __post_init__(self) -> None:
        if not PREFIX_PATTERN.match(self.prefix):
            raise ValueError(
                f"a key prefix may hold letters, digits and _ . : - only (braces would split a cluster's slot), "
                f"got {self.prefix!r}"
            )
        tag = f":{CLUSTER_TAG}" if self.cluster else ""
        object.__setattr__(self, "base", f"{self.prefix}{PLAIN_PREFIX}{tag}")

    # -- one of each ------------------------------------------------------------------
    @property
    def dead_index_all(self) -> str:
        return f"{self.base}:dead:index"

    @property
    def dead_by_field(self) -> str:
        return f"{self.base}:dead:by_field"

    @property
    def dead_channels(self) -> str:
        return f"{self.base}:dead:channels"

    @property
    def dead_record_prefix(self) -> str:
        return f"{self.base}:dead:rec:"

    @property
    def dead_dropped(self) -> str:
        return f"{self.base}:dead:dropped"

    @property
    def devices_expected(self) -> str:
        return f"{self.base}:devices:expected"

    @property
    def devices_wanted(self) -> str:
        return f"{self.base}:devices:wanted"

    @property
    def devices_info(self) -> str:
        return f"{self.base}:devices:info"

    @property
    def devices_seen(self) -> str:
        return f"{self.base}:devices:seen"

    @property
    def devices_done(self) -> str:
        return f"{self.base}:devices:done"

    @property
    def devices_beats(self) -> str:
        return f"{self.base}:devices:beats"

    @property
    def devices_forgotten(self) -> str:
        return f"{self.base}:devices:forgotten"

    @property
    def devices_leaving(self) -> str:
        return f"{self.base}:devices:leaving"

    @property
    def sweep_due(self) -> str:
        return f"{self.base}:sweep:due"

    @property
    def channel_sizes(self) -> str:
        return f"{self.base}:channel_sizes"

    @property
    def cancelled(self) -> str:
        return f"{self.base}:cancelled"

    @property
    def rate_limits(self) -> str:
        return f"{self.base}:rate_limits"

    @property
    def rate_tat(self) -> str:
        return f"{self.base}:rate_tat"

    @property
    def lease_holders(self) -> str:
        return f"{self.base}:lease:holders"

    @property
    def kombu_unacked(self) -> str:
        """kombu's Redis transport keeps delivered, not yet acked messages here. kombu cannot
        use a Redis Cluster, so in the cluster layout this (and a queue's list,
        :meth:`queue_list`) is a name in the books' slot that no step touches: a step that
        declares it still hashes to one slot."""
        return f"{self.base}:no-kombu:unacked" if self.cluster else f"{self.prefix}unacked"

    @property
    def kombu_unacked_index(self) -> str:
        return f"{self.base}:no-kombu:unacked_index" if self.cluster else f"{self.prefix}unacked_index"

    def room_probe(self) -> str:
        """A key never written, for :func:`.memory.has_room`: ``SET`` with ``XX`` on it is a write
        that changes nothing, which a Redis at ``maxmemory`` refuses like any other."""
        return f"{self.base}:probe:room"

    # -- one a channel, device, task, run ... ----------------------------------------------
    def queue_list(self, channel: int) -> str:
        """The list kombu keeps for the channel's queue on a Redis broker."""
        return self.list_of(queue(channel))

    def list_of(self, queue_name: str) -> str:
        """The list kombu keeps for the queue named ``queue_name`` (a message's routing key)."""
        return f"{self.base}:no-kombu:{queue_name}" if self.cluster else f"{self.prefix}{queue_name}"

    def results(self, channel: int) -> str:
        """The legacy result list the default save function appends to."""
        return f"{self.prefix}{RESULTS_PREFIX}{channel}{CLUSTER_TAG if self.cluster else ''}"

    def pending(self, channel: int) -> str:
        return f"{self.base}:pending:{channel}"

    def meta(self, channel: int) -> str:
        return f"{self.base}:meta:{channel}"

    def stats(self, channel: int) -> str:
        return f"{self.base}:stats:{channel}"

    def notify(self, channel: int) -> str:
        return f"{self.base}:notify:{channel}"

    def dead_index(self, channel: int | None = None) -> str:
        return self.dead_index_all if channel is None else f"{self.dead_index_all}:{channel}"

    def dead_record(self, task_id: str) -> str:
        return f"{self.base}:dead:rec:{task_id}"

    def inhand(self, device: str) -> str:
        return f"{self.base}:inhand:{device}"

    def lost(self, channel: int) -> str:
        return f"{self.base}:lost:{channel}"

    def backlog(self, channel: int) -> str:
        """Reloaded tasks of the channel, in the books, waiting for room in the channel."""
        return f"{self.base}:backlog:{channel}"

    def claims(self, channel: int) -> str:
        """Tasks of the channel whose result a device's save function is saving: claimed first, so
        that a task that ran twice is saved once (see ``lua/claim.lua``)."""
        return f"{self.base}:claims:{channel}"

    def held(self, channel: int) -> str:
        """How many tasks of the channel devices hold (taken off the queue, not finished): the
        server's back-pressure counts only the tasks still waiting in the channel."""
        return f"{self.base}:held:{channel}"

    def started(self, channel: int) -> str:
        """Messages of the channel whose tasks a device has started: only those are charged a death."""
        return f"{self.base}:started:{channel}"

    def unsent(self, channel: int) -> str:
        """The journal of a broker other than this Redis: tasks entered in the books whose
        message the broker has not confirmed yet (see :meth:`.Redeliveries.resend_unsent`)."""
        return f"{self.base}:unsent:{channel}"

    def run(self, name: str) -> str:
        """The record of a resumable run (see :mod:`.books.runs`)."""
        return f"{self.base}:run:{name}"

    def steps(self, writer: str) -> str:
        """Last step of each slot (thread) of a writer (a device, the server of a channel):
        a call repeated after a lost reply is recognised and not applied again."""
        return f"{self.base}:steps:{writer}"

    def device_lease(self, name: str) -> str:
        """The lease of a device's name: one process at a time works as ``name`` (see :mod:`.books.leases`)."""
        return f"{self.base}:lease:device:{name}"

    def channel_lease(self, channel: int) -> str:
        """The lease of the server that feeds a channel: one server per channel at a time."""
        return f"{self.base}:lease:channel:{channel}"

    def run_lease(self, name: str) -> str:
        """The lease of the server that runs a named (resumable) run: one server per run at a time."""
        return f"{self.base}:lease:run:{name}"


DEFAULT = Keys()  # the default layout: no prefix, one Redis server

# The default layout's names, for tests and tools (the package's code asks its own Keys).
DEAD_INDEX = DEFAULT.dead_index_all
DEAD_CHANNELS = DEFAULT.dead_channels
DEAD_RECORD_PREFIX = DEFAULT.dead_record_prefix
DEAD_DROPPED = DEFAULT.dead_dropped
DEVICES_EXPECTED = DEFAULT.devices_expected
DEVICES_WANTED = DEFAULT.devices_wanted
DEVICES_INFO = DEFAULT.devices_info
DEVICES_SEEN = DEFAULT.devices_seen
DEVICES_DONE = DEFAULT.devices_done
DEVICES_BEATS = DEFAULT.devices_beats
DEVICES_FORGOTTEN = DEFAULT.devices_forgotten
DEVICES_LEAVING = DEFAULT.devices_leaving
SWEEP_DUE = DEFAULT.sweep_due
CHANNEL_SIZES = DEFAULT.channel_sizes
CANCELLED = DEFAULT.cancelled
RATE_LIMITS = DEFAULT.rate_limits
RATE_TAT = DEFAULT.rate_tat
LEASE_HOLDERS = DEFAULT.lease_holders
KOMBU_UNACKED = DEFAULT.kombu_unacked
KOMBU_UNACKED_INDEX = DEFAULT.kombu_unacked_index
queue_list = DEFAULT.queue_list
results = DEFAULT.results
pending = DEFAULT.pending
meta = DEFAULT.meta
stats = DEFAULT.stats
notify = DEFAULT.notify
dead_index = DEFAULT.dead_index
dead_record = DEFAULT.dead_record
inhand = DEFAULT.inhand
lost = DEFAULT.lost
backlog = DEFAULT.backlog
claims = DEFAULT.claims
held = DEFAULT.held
started = DEFAULT.started
unsent = DEFAULT.unsent
run = DEFAULT.run
steps = DEFAULT.steps
device_lease = DEFAULT.device_lease
channel_lease = DEFAULT.channel_lease
run_lease = DEFAULT.run_lease
room_probe = DEFAULT.room_probe
