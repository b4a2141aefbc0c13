"""Resumable runs: how far a server got in each generator, kept in the books.

A server started with ``BaseConfig(..., resume=True)`` keeps a record of its run
(``mutitask:run:<name>``). The publish step that enters a channel's tasks in the books
also writes, in the same Lua step, how many items of that channel's generator the server
had taken when it built them (``taken:<ch>``) and how many it has published
(``published:<ch>``): the record can never say more (or less) than the books hold.

Started again after a crash with the same script, the server skips ``taken:<ch>`` items
of each generator (``next()``, never a list), waits for the tasks still outstanding
instead of publishing them again, and reports the whole run. A generator can only be
skipped if it yields the same items again, so the record keeps a fingerprint of the first
:data:`FINGERPRINT_ITEMS` items of each channel; a generator that yields others is refused
(:class:`ResumeMismatch`). A run that finished (or ``resume=False``) starts afresh.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import redis

from mutitask_celery import codec
from mutitask_celery.books.ledger import ChannelStats
from mutitask_celery.connection import text
from mutitask_celery.errors import ConfigurationError, EncodingError
from mutitask_celery.keys import DEFAULT, Keys

FINGERPRINT_ITEMS = 3  # items of each generator compared before a run is resumed
RUNNING, FINISHED = "running", "finished"


class ResumeMismatch(ConfigurationError):
    """The generators of a run being resumed yield other items than the first time."""


def check_run_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > 200 or any(c.isspace() or c in "{}" for c in name):
        raise ConfigurationError(f"run_name must be a short name without spaces or braces, got {name!r}")
    return name


def fingerprint(items: list[Any], encode: Callable[[Any], str] = codec.encode) -> str:
    """A digest of the first items as they would be sent (their encoded text, or their repr)."""
    digest = hashlib.sha256()
    for item in items:
        try:
            digest.update(encode(item).encode())
        except EncodingError:
            digest.update(repr(item).encode())
        digest.update(b"\x00")
    return f"{len(items)}:{digest.hexdigest()}"


def _began_with(recorded: str | None, head: list[Any]) -> bool:
    """Whether a run whose record holds ``recorded`` began with the items ``head``.

    Arrays changed form when they began to travel as their memory (base64) instead of
    nested lists, and with it their fingerprint. A run begun before, with arrays among its
    first items, is still resumed by this version: its tasks still decode, so only the
    fingerprint needs the old form (computed only when the new one differs)."""
    return recorded == fingerprint(head) or recorded == fingerprint(head, codec.encode_arrays_as_lists)


@dataclass
class Resumed:
    """Where each channel of a resumed run stands (empty for a fresh run)."""

    taken: dict[int, int]
    published: dict[int, int]
    before: dict[int, ChannelStats]


class RunRecord:
    """The record of one named run (see the module docstring)."""

    def __init__(self, client: redis.Redis, name: str, keys: Keys = DEFAULT) -> None:
        self.client = client
        self.name = check_run_name(name)
        self.key = keys.run(self.name)

    def load(self) -> dict[str, str]:
        return {text(k): text(v) for k, v in self.client.hgetall(self.key).items()}

    def begin(
        self, sources: list[Iterator[Any]], before: dict[int, ChannelStats], resume: bool
    ) -> tuple[list[Iterator[Any]], Resumed]:
        """The sources to run (advanced past what an unfinished run published when
        ``resume``), and where the run stands. Raises :class:`ResumeMismatch`."""
        record = self.load()
        heads = [list(itertools.islice(source, FINGERPRINT_ITEMS)) for source in sources]
        sources = [itertools.chain(head, source) for head, source in zip(heads, sources, strict=True)]
        if resume and record.get("state") == RUNNING:
            return self._resume(record, sources, heads)
        self.client.delete(self.key)
        fields: dict[str | bytes, str | bytes] = {
            "state": RUNNING,
            "started": repr(time.time()),
            "channels": str(len(sources)),
        }
        for ch, stats in before.items():
            fields[f"before:{ch}"] = json.dumps(asdict(stats))
        for ch, head in enumerate(heads, start=1):
            fields[f"fingerprint:{ch}"] = fingerprint(head)
        self.client.hset(self.key, mapping={name: value for name, value in fields.items()})  # typed by context
        return sources, Resumed({}, {}, {})

    def _resume(
        self, record: dict[str, str], sources: list[Iterator[Any]], heads: list[list[Any]]
    ) -> tuple[list[Iterator[Any]], Resumed]:
        if int(record.get("channels", "0")) != len(sources):
            raise ResumeMismatch(
                f"run {self.name!r} had {record.get('channels')} channel(s), this one has {len(sources)}: it cannot "
                "be resumed (resume=False starts afresh)"
            )
        for ch, head in enumerate(heads, start=1):
            if not _began_with(record.get(f"fingerprint:{ch}"), head):
                raise ResumeMismatch(
                    f"run {self.name!r}: channel {ch}'s generator yields other first items than when the run began, "
                    "so skipping what it published would skip the wrong tasks; resume=False starts afresh "
                    "(the tasks still outstanding are waited for all the same)"
                )
        taken = {ch: int(record.get(f"taken:{ch}", "0")) for ch in range(1, len(sources) + 1)}
        for ch, source in enumerate(sources, start=1):
            for _ in range(taken[ch]):  # advanced, never listed: a generator may be long
                next(source, None)
        return sources, Resumed(
            taken=taken,
            published={ch: int(record.get(f"published:{ch}", "0")) for ch in taken},
            before={ch: ChannelStats(**json.loads(record[f"before:{ch}"])) for ch in taken if f"before:{ch}" in record},
        )

    def finish(self) -> None:
        """The run ended: started again, it starts afresh."""
        self.client.hset(self.key, "state", FINISHED)
