"""Every Lua step of the books, its ``KEYS`` and ``ARGV`` named once, in order.

A step is called with keywords (``FINISH.on(client)(pending=..., device=..., ...)``), and this
module puts them in the positions the script reads: nobody counts positions by hand, and a
name left out or misspelt is an error here rather than a wrong key in Redis. Each script
names the same entries as ``local``\\ s at its top (``local pending = KEYS[1]``), and
``tests/unit/test_lua.py`` checks the two lists are equal, so Python and Lua cannot drift apart.

Some steps take a tail of any length after their named entries (``more_keys``,
``more_args``: a list under that keyword), such as the dead-letter record of each task a
finish step records. Every call goes through :meth:`Step.keys_and_args`: the one place for what must happen
with each step to go.

Behind replicas that confirm steps (:mod:`.replication`), a step waits until they have it.
Steps that only say a process lives (a heartbeat, a lease renewed or given up, a start mark, a
rate limit's tokens) do not (``confirm=False``): a failover may lose one, which costs a beat,
while waiting for a replica that rejoins (seconds) would make live devices look dead and get
their tasks buried.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.commands.core import Script

from mutitask_celery.books import scripts
from mutitask_celery.connection import unconfirmed

Value = str | bytes | int | float


@dataclass(frozen=True)
class Step:
    """One Lua step: ``lua/<name>.lua``, and its keys and arguments by name, in order."""

    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...] = ()
    more_keys: str = ""  # the keyword of a tail of keys of any length ('' for none)
    more_args: str = ""  # the keyword of a tail of arguments of any length ('' for none)
    confirm: bool = True  # behind confirming replicas, wait until they have it (see the module's docstring)

    def __post_init__(self) -> None:
        names = [*self.keys, *self.args, *filter(None, (self.more_keys, self.more_args))]
        if len(set(names)) != len(names):
            raise ValueError(f"step {self.name}: a name is used twice in {names}")

    def keys_and_args(self, given: Mapping[str, Any]) -> tuple[list[Value], list[Value]]:
        """The step's KEYS and ARGV from keywords; every name exactly once, nothing else."""
        expected = {*self.keys, *self.args, *filter(None, (self.more_keys, self.more_args))}
        missing, unknown = expected - given.keys(), given.keys() - expected
        if missing or unknown:
            raise TypeError(
                f"step {self.name}: "
                + "; ".join(
                    part
                    for part in (
                        f"missing {sorted(missing)}" if missing else "",
                        f"unknown {sorted(unknown)}" if unknown else "",
                    )
                    if part
                )
            )
        ks: list[Value] = [given[name] for name in self.keys]
        argv: list[Value] = [given[name] for name in self.args]
        if self.more_keys:
            ks += list(given[self.more_keys])
        if self.more_args:
            argv += list(given[self.more_args])
        return ks, argv

    def on(self, client: redis.Redis) -> Bound:
        """This step, registered on ``client`` (sent to Redis once, then called by its SHA)."""
        return Bound(self, scripts.load(client if self.confirm else unconfirmed(client), self.name))


@dataclass(frozen=True)
class Bound:
    """A step registered on a client, called with keywords."""

    step: Step
    script: Script

    @property
    def sha(self) -> str:
        return str(self.script.sha)

    def __call__(self, **given: Any) -> Any:
        """Run the step and return its reply."""
        ks, argv = self.step.keys_and_args(given)
        return self.script(keys=cast("list[str]", ks), args=argv)


def _step(name: str, keys: str, args: str = "", more_keys: str = "", more_args: str = "", confirm: bool = True) -> Step:
    return Step(name, tuple(keys.split()), tuple(args.split()), more_keys, more_args, confirm)


# The books' steps, by name. The KEYS are named for the Redis keys they are (see keys.py);
# each script's header says what every entry holds.
PUBLISH = _step(
    "publish",
    "pending stats held queue steps unsent backlog run lease lease_holders",
    "channel_size step slot mode now tasks run_channel taken lease_value lease_ttl byte_budget",
    more_args="items",  # (id, data) pairs, then the messages' templates
)
FEED = _step("feed", "backlog pending held queue unsent", "channel_size mode now", more_args="messages")
FINISH = _step(
    "finish",
    "pending meta stats notify results dead_index dead_index_ch dead_channels devices_done devices_seen "
    "devices_beats inhand lost started steps held backlog claims dead_by_field",
    "device channel message_id busy step writer claim",
    more_keys="records",  # the dead-letter record of each outcome
    more_args="outcomes",  # five values an outcome: kind, task id, result, reason, traceback
)
CANCEL = _step("cancel", "cancelled backlog pending meta lost stats notify", "channel most")
DROP_CANCELLED = _step("drop_cancelled", "pending meta lost claims stats notify", more_args="task_ids")
CLAIM = _step("claim", "pending claims inhand", "claim message_id notes_holds", "records", "task_ids")
CLAIM_MARK = _step("claim_mark", "claims", "claim mark", more_args="task_ids")
DROP_NOTE = _step("drop_note", "inhand held started", "message_id noted drop_mark device")
RECOVER = _step(
    "recover",
    "devices_seen inhand unacked unacked_index queue started lost pending meta stats dead_index dead_index_ch "
    "dead_channels notify held claims dead_by_field",
    "device judged message_id noted tag mark_read max_attempts channel tasks leaving",
    more_keys="records",  # the dead-letter record of each task
    more_args="ids_then_messages",  # the task ids, then the message(s) to queue again
)
SETTLE = _step(
    "settle",
    "pending lost started claims meta stats dead_index dead_index_ch dead_channels notify dead_by_field",
    "message_id channel",
    more_keys="records",
    more_args="task_ids",
)
RESTORE = _step("restore", "unacked unacked_index queue", "tag", more_args="messages")
RETIRE = _step("retire", "devices_seen devices_beats inhand", "device seen")
FORGET = _step(
    "forget",
    "devices_seen devices_beats inhand devices_info devices_done devices_wanted devices_forgotten steps",
    "device seen",
)
HELD = _step("held", "held devices_beats", "channel", more_keys="notes", more_args="devices", confirm=False)
HEARD = _step(
    "heard",
    "devices_seen devices_beats devices_done devices_forgotten inhand unacked_index",
    "device",
    more_keys="message_keys",  # to note a message just taken: held, notify and the queue of its channel
    more_args="taken",  # ... and its id, delivery tag, tasks and channel
    confirm=False,  # a heartbeat; a note it loses in a failover is a stray the sweep finds
)
START = _step("start", "devices_seen devices_beats started inhand", "device message_id alone noted_only", confirm=False)
RELOAD = _step(
    "reload",
    "dead_index dead_index_ch pending meta stats backlog dead_by_field",
    "channel now version since up_to device reason_kind reason stamped",
    more_keys="records",
    more_args="ids_then_stamps",  # the ids, then (stamped) the failure time of each as its caller read it
)
DELETE = _step(
    "delete",
    "dead_index dead_index_ch dropped dead_by_field",
    "count channel since up_to device reason_kind reason stamped",
    more_keys="records",
    more_args="ids_then_stamps",
)
REINDEX = _step("reindex", "dead_index dead_by_field", "mode", more_keys="records", more_args="named")
PEEK = _step("peek", "", more_keys="records", more_args="fields", confirm=False)  # reads only: nothing to confirm
UNPUBLISHABLE = _step(
    "unpublishable",
    "record dead_index dead_index_ch dead_channels meta stats dead_by_field",
    "task_id channel data reason",
)
LEASE_TAKE = _step("lease_take", "lease holders", "value ttl replaces")
LEASE_KEEP = _step("lease_keep", "lease holders", "value ttl", confirm=False)
LEASE_RELEASE = _step("lease_release", "lease holders", "value", confirm=False)
TAKE_TOKENS = _step("take_tokens", "rate_limits rate_tat", "tasks channel", confirm=False)

ALL: tuple[Step, ...] = (
    PUBLISH,
    FEED,
    FINISH,
    CANCEL,
    DROP_CANCELLED,
    CLAIM,
    CLAIM_MARK,
    DROP_NOTE,
    RECOVER,
    SETTLE,
    RESTORE,
    RETIRE,
    FORGET,
    HELD,
    HEARD,
    START,
    RELOAD,
    DELETE,
    REINDEX,
    PEEK,
    UNPUBLISHABLE,
    LEASE_TAKE,
    LEASE_KEEP,
    LEASE_RELEASE,
    TAKE_TOKENS,
)
