"""The chaos soak's books Redis (bench/chaos.py): one ``redis-server``, or a Redis Sentinel
group, behind one small interface: the environment that points a process at it, a client of
the master now, the faults the soak makes on it, and ``close``.

A fault is a generator run from the soak's supervisor loop, which must keep its devices
meanwhile (restart the dead, thaw the frozen). What it does between two ``yield``\\ s runs on
the main thread (a node started there dies with the soak: ``die_with_parent``); what it
yields is a wait (a promotion, a node back as a replica), which :class:`FaultRun` runs on a
helper thread and whose result it sends back into the generator, or :data:`BACK`: from here
the books take writes again (a replica promoted), the instant from which the soak watches
the run go on. The fault ends when the generator does: Redis whole again (every node up, the
replicas in sync with the master).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from redis.sentinel import Sentinel

from mutitask_celery.tools.localredis import LocalRedis, free_port
from mutitask_celery.tools.localsentinel import LocalSentinelGroup


class Back:
    """What a fault yields once the books take writes again: a master that answers, or a
    replica promoted (the old master may still be on its way back)."""


BACK = Back()
Fault = Generator[Callable[[], Any] | Back, Any, None]
"""A fault's steps: each ``yield`` hands over a blocking wait and gets its result back, or says :data:`BACK`."""

CLIENT_TIMEOUT = 2.0  # seconds a soak's read waits for the master: a frozen one must not hold the supervisor up
FAULT_WAIT = 60.0  # seconds a step of a fault (a promotion, a node rejoining) may take at most
FREEZE_SECONDS = 12.0  # a frozen master: longer than the sentinels take to promote a replica (5 s or so)
SENTINEL_MASTER = "chaos"
DATA_PASSWORD = "chaos-data-nodes-pw"  # a deployment's shape: the data nodes' password in the URL...
SENTINEL_PASSWORD = "chaos-sentinels-pw"  # ...and the sentinels' own, apart


class BooksRedis(ABC):
    """Where the soak's books live: started once, faulted ``--redis-restarts`` times, closed."""

    kinds: tuple[str, ...]
    """The faults it makes, in the order the soak cycles through them."""

    @abstractmethod
    def start(self) -> BooksRedis:
        """Start the server(s); return once they take writes."""

    @property
    @abstractmethod
    def env(self) -> dict[str, str]:
        """The settings that point a process (a device, the server, the soak itself) at it."""

    @abstractmethod
    def connect(self, raw: bool) -> redis.Redis:
        """A new client of the master now (``raw``: one returning ``bytes``); the caller closes it."""

    @abstractmethod
    def fault(self, kind: str) -> Fault:
        """One fault of ``kind`` (one of :attr:`kinds`), as steps for :class:`FaultRun`."""

    @abstractmethod
    def figures(self, done: Counter[str]) -> dict[str, Any]:
        """The figures that count the faults ``done``, by kind."""

    @abstractmethod
    def close(self) -> None:
        """Stop every process it started, by its id."""

    @contextmanager
    def client(self, raw: bool = False) -> Iterator[redis.Redis]:
        """A new client of the master now, closed after: a new one for each look, never one kept
        across a fault (a command retried after a timeout would reconnect to the old master,
        redis/redis-py#3874)."""
        client = self.connect(raw)
        try:
            yield client
        finally:
            client.close()


class SingleRedis(BooksRedis):
    """One ``redis-server`` with its append-only file on; its fault: stopped (SIGTERM, its own
    shutdown, the file flushed) and started again on the same port."""

    kinds = ("restart",)

    def __init__(self, workdir: Path) -> None:
        self.server = LocalRedis(workdir=workdir, appendonly=True, port=free_port())

    def start(self) -> SingleRedis:
        self.server.start()
        return self

    @property
    def env(self) -> dict[str, str]:
        return {"MUTITASK_REDIS_URL": self.server.url}

    def connect(self, raw: bool) -> redis.Redis:
        return redis.Redis.from_url(self.server.url, decode_responses=not raw, socket_timeout=5)

    def fault(self, kind: str) -> Fault:
        self.server.stop()
        self.server.start()  # returns once it answers
        yield BACK

    def figures(self, done: Counter[str]) -> dict[str, Any]:
        return {"redis_restarts": done["restart"]}

    def close(self) -> None:
        self.server.close()


class SentinelRedis(BooksRedis):
    """A master, two replicas and three sentinels (:class:`LocalSentinelGroup`, passwords on
    the data nodes and on the sentinels); everyone finds the master through the sentinels.
    Its faults, each ended once the group is whole again:

    - ``kill``: the master SIGKILLed; once a replica is promoted, the node is started again
      and waited for until the sentinels have made it a replica of the new master;
    - ``handover``: ``SENTINEL FAILOVER``, until the old master is a replica of the new one;
    - ``freeze``: the master frozen (SIGSTOP) for :data:`FREEZE_SECONDS`; a replica is
      promoted meanwhile, and the old master, thawed, demoted to a replica of it.
    """

    kinds = ("kill", "handover", "freeze")

    def __init__(self, workdir: Path) -> None:
        self.group = LocalSentinelGroup(
            SENTINEL_MASTER,
            password=DATA_PASSWORD,
            sentinel_password=SENTINEL_PASSWORD,
            workdir=workdir,
            die_with_parent=True,  # nothing outlives a soak killed with SIGKILL
        )
        self.sentinel: Sentinel | None = None

    def start(self) -> SentinelRedis:
        self.group.start()
        self.sentinel = Sentinel(
            self.group.sentinel_addresses,
            sentinel_kwargs={**self.group.sentinel_kwargs, "socket_timeout": CLIENT_TIMEOUT},
            socket_timeout=CLIENT_TIMEOUT,
            **self.group.connection_kwargs,
        )
        return self

    @property
    def env(self) -> dict[str, str]:
        return {
            "MUTITASK_REDIS_URL": self.group.url,
            "MUTITASK_SENTINEL_MASTER": self.group.master_name,
            "MUTITASK_SENTINEL_PASSWORD": self.group.sentinel_password or "",
        }

    def connect(self, raw: bool) -> redis.Redis:
        assert self.sentinel is not None, "start() first"
        client: redis.Redis = self.sentinel.master_for(
            self.group.master_name,
            decode_responses=not raw,
            socket_timeout=CLIENT_TIMEOUT,
            socket_connect_timeout=CLIENT_TIMEOUT,
        )
        return client

    def fault(self, kind: str) -> Fault:
        return {"kill": self._kill, "handover": self._handover, "freeze": self._freeze}[kind]()

    def _kill(self) -> Fault:
        group = self.group
        old = group.kill_master()
        yield lambda: group.wait_promoted(old, _deadline())
        yield BACK
        group.restart_node(old.port)  # here, on the main thread: it must die with the soak
        yield lambda: group.wait_replica(old.port, _deadline())

    def _handover(self) -> Fault:
        group = self.group
        old = yield lambda: group.failover(_deadline())  # a sentinel may refuse for a few seconds
        yield lambda: group.wait_promoted(old, _deadline())
        yield BACK
        yield lambda: group.wait_replica(old.port, _deadline())

    def _freeze(self) -> Fault:
        group = self.group
        old = group.freeze_master(FREEZE_SECONDS)  # thawed by a timer of the group's
        yield lambda: group.wait_promoted(old, _deadline())
        yield BACK
        yield lambda: group.wait_replica(old.port, _deadline(FREEZE_SECONDS))

    def figures(self, done: Counter[str]) -> dict[str, Any]:
        return {"failovers": {kind: done[kind] for kind in self.kinds}}

    def close(self) -> None:
        if self.sentinel is not None:
            for client in self.sentinel.sentinels:
                client.close()
        self.group.close()


def _deadline(more: float = 0.0) -> float:
    return time.monotonic() + FAULT_WAIT + more


class FaultRun:
    """One fault under way: :meth:`poll` it from the supervisor loop until it returns True.

    Each wait the fault yields runs on a daemon thread of its own (none is joined at exit: a
    soak that fails mid-fault exits at once); its error, if any, is raised by :meth:`poll`.
    """

    def __init__(self, kind: str, steps: Fault) -> None:
        self.kind = kind
        self.started = time.monotonic()
        self.back: float | None = None  # when the books took writes again
        self.ended: float | None = None
        self._steps = steps
        self._thread: threading.Thread | None = None
        self._outcome: tuple[bool, Any] | None = None  # (succeeded, result or error) of the wait
        self._advance(None)

    def poll(self) -> bool:
        """Take the next step if the wait under way is over; True once the fault has ended."""
        if self.ended is not None:
            return True
        if self._outcome is None:
            return False
        succeeded, value = self._outcome
        if not succeeded:
            raise SystemExit(f"the Redis fault {self.kind!r} did not complete: {value}")
        self._advance(value)
        return self.ended is not None

    def _advance(self, sent: Any) -> None:
        try:
            wait = self._steps.send(sent)
            while isinstance(wait, Back):
                self.back = time.monotonic() if self.back is None else self.back
                wait = self._steps.send(None)
        except StopIteration:
            self.ended = time.monotonic()
            self.back = self.ended if self.back is None else self.back
            return
        self._outcome = None
        self._thread = threading.Thread(target=self._run, args=(wait,), name=f"fault-{self.kind}", daemon=True)
        self._thread.start()

    def _run(self, wait: Callable[[], Any]) -> None:
        try:
            self._outcome = (True, wait())
        except Exception as error:  # handed to the main thread, raised there
            self._outcome = (False, error)


def books_redis(sentinel: bool, workdir: Path) -> BooksRedis:
    """The soak's books Redis: a Sentinel group with ``sentinel``, else one ``redis-server``."""
    if sentinel:
        return SentinelRedis(workdir / "sentinel")
    return SingleRedis(workdir)
