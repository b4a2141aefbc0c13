"""Redis Sentinel on one machine: a master, its replicas and three sentinels, with faults on demand.

Why: a run that must survive a Redis failover (issue 25) can only be tested against real
sentinels electing a real replica. :class:`LocalSentinelGroup` starts them on free ports
of 127.0.0.1, each process in a directory of its own with its append-only file, and makes
the faults a deployment meets: a master killed (SIGKILL), a failover asked for
(``SENTINEL FAILOVER``), a master frozen (SIGSTOP: the process lives, but says nothing)::

    with LocalSentinelGroup() as group:        # kombu's URL: group.url, master: group.master_name
        old = group.kill_master()
        new = group.wait_promoted(old)          # a replica took over, and has a replica itself
        group.restart_node(old.port)
        group.wait_replica(old.port)            # the old master came back as a replica

It never touches another Redis: it stops the processes it started by their ids, also on
an error, and never by name (a ``pkill -f redis-server`` once stopped the machine's own
Redis on 6379).

Each process starts from a config file of its own, not from command-line options as
:class:`~mutitask_celery.tools.localredis.LocalRedis` does: Sentinel rewrites its own file as
it learns the topology, and has each data node rewrite its file (``CONFIG REWRITE``) after
every ``REPLICAOF``, so a node started again from its file comes back as what Sentinel
last made it. A master that was killed comes back as a master (nobody rewrote its file);
the sentinels then turn it into a replica, about 8 s after it answers again (Sentinel's
four hello periods, so that it has heard of any newer configuration first).

The timing, and why:

- ``down-after-milliseconds`` 2000: a master silent for 2 s is down; a test needs no more.
- ``failover-timeout`` 4000 ms: a failover attempt that does not complete (a split vote,
  a replica that does not take the promotion) is tried again only after twice the failover
  timeout, so a short one keeps a test from waiting minutes (the default is 3 min). It
  also bounds each step of a failover, which take about a second here. A failover that
  completes holds nothing up: the new master can be failed over at once.
- ``min-replicas-to-write 1`` on every data node: a master cut off from its replicas (a
  frozen one that wakes up, a killed one restarted) refuses writes instead of taking ones
  that the promoted replica will never see.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, TypeVar
from urllib.parse import quote

import redis

from mutitask_celery.errors import BrokerUnavailable
from mutitask_celery.tools.embedded import find_server
from mutitask_celery.tools.localredis import free_port, parent_death_preexec

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
"""Seconds for the whole group to come up: data nodes, replication, sentinels that know each other."""
WAIT_TIMEOUT = 30.0
"""Seconds a wait (a promotion, a node rejoining) takes at most when no deadline is given."""
STOP_GRACE = 10.0
"""Seconds the processes get, after SIGTERM, before SIGKILL."""
CLIENT_TIMEOUT = 1.0
"""Seconds a probe waits for a node: a frozen node must not hold a poll up."""

T = TypeVar("T")


class Address(NamedTuple):
    """A node's host and port; equal to redis-py's ``(host, port)`` tuples."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class SentinelView(NamedTuple):
    """What one sentinel says of the master, as ``SENTINEL MASTER`` gives it: address and flags."""

    address: Address
    flags: frozenset[str]

    @property
    def usable(self) -> bool:
        """What redis-py's ``Sentinel.discover_master`` accepts: a master, not judged down."""
        return "master" in self.flags and not self.flags & {"s_down", "o_down"}

    @property
    def settled(self) -> bool:
        """Usable, and no failover of it under way (the leading sentinel's view lags its own promotion)."""
        return self.usable and "failover_in_progress" not in self.flags


@dataclass
class Node:
    """One process of the group: a data node (``redis-server <conf>``) or a sentinel (``--sentinel``)."""

    kind: Literal["data", "sentinel"]
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    frozen: bool = False

    @property
    def address(self) -> Address:
        return Address(HOST, self.port)

    @property
    def conf(self) -> Path:
        return self.workdir / f"{self.kind}.conf"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` to this node's process, by its id (nothing if it has exited and been reaped)."""
        if self.proc is not None:
            self.proc.send_signal(sig)


@dataclass
class _Timers:
    """The thaws :meth:`LocalSentinelGroup.freeze_master` scheduled, cancelled by ``stop``."""

    pending: list[threading.Timer] = field(default_factory=list)

    def add(self, seconds: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, action)
        timer.daemon = True
        self.pending.append(timer)
        timer.start()

    def cancel(self) -> None:
        for timer in self.pending:
            timer.cancel()
        self.pending.clear()


def _quoted(value: str) -> str:
    """A config-file argument in double quotes, so a password may hold spaces or ``#``."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class LocalSentinelGroup:
    """A master, ``replicas`` replicas and ``sentinels`` sentinels on free ports of 127.0.0.1.

    ``password``: the data nodes' (``requirepass``, and ``masterauth`` so that replicas
    log in to their master; the sentinels' ``auth-pass``), with ``username`` the ACL user
    the group's own connections log in as (None: the default user). ``sentinel_password``:
    the sentinels' own ``requirepass``, a different secret. ``server``: the binary, as
    :func:`~mutitask_celery.tools.embedded.find_server` chooses it. ``die_with_parent``:
    every process dies with this one even on SIGKILL (Linux); start and restart nodes
    from the main thread then. A subclass may override :meth:`data_config` and
    :meth:`sentinel_config` to run other files (the shipped ones, say).
    """

    def __init__(
        self,
        master_name: str = "mymaster",
        *,
        replicas: int = 2,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 2000,
        failover_timeout_ms: int = 4000,
        password: str | None = None,
        username: str | None = None,
        sentinel_password: str | None = None,
        workdir: Path | None = None,
        server: str = "auto",
        die_with_parent: bool = False,
    ) -> None:
        self.master_name = master_name
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.password, self.username, self.sentinel_password = password, username, sentinel_password
        self.binary = find_server(server).path
        self.die_with_parent = die_with_parent
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="mutitask-sentinel-")) if workdir is None else workdir
        ports = _free_ports(1 + replicas + sentinels)
        self.data_nodes = [self._node("data", port, f"data-{i}") for i, port in enumerate(ports[: 1 + replicas])]
        self.sentinel_nodes = [
            self._node("sentinel", port, f"sentinel-{i}") for i, port in enumerate(ports[1 + replicas :], 1)
        ]
        self.first_master = self.data_nodes[0].address
        self._timers = _Timers()

    def _node(self, kind: Literal["data", "sentinel"], port: int, name: str) -> Node:
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        return Node(kind, port, workdir)

    # -- what clients need -------------------------------------------------------------

    @property
    def data_ports(self) -> list[int]:
        """The data nodes' ports, the first master's first."""
        return [node.port for node in self.data_nodes]

    @property
    def sentinel_addresses(self) -> list[Address]:
        """The sentinels, as redis-py's ``redis.sentinel.Sentinel`` takes them."""
        return [node.address for node in self.sentinel_nodes]

    @property
    def url(self) -> str:
        """kombu's form, ``sentinel://[user:password@]127.0.0.1:p1;sentinel://...;.../0``.

        The credentials are the data nodes' (kombu logs in to the master with them); the
        sentinels' own password travels apart, as :attr:`sentinel_kwargs`.
        """
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return ";".join(f"sentinel://{auth}{address}" for address in self.sentinel_addresses) + "/0"

    @property
    def connection_kwargs(self) -> dict[str, Any]:
        """How to log in to a data node: redis-py's ``Redis(**kwargs)``, ``Sentinel.master_for``."""
        return {"username": self.username, "password": self.password}

    @property
    def sentinel_kwargs(self) -> dict[str, Any]:
        """How to log in to a sentinel: redis-py's and kombu's ``sentinel_kwargs``."""
        return {} if self.sentinel_password is None else {"password": self.sentinel_password}

    def node(self, port: int) -> Node:
        """The node on ``port``."""
        for node in [*self.data_nodes, *self.sentinel_nodes]:
            if node.port == port:
                return node
        raise KeyError(f"no node of this group listens on {port}")

    def data_client(self, port: int, **kwargs: Any) -> redis.Redis:
        """A client of the data node on ``port``, logged in; close it when done."""
        options: dict[str, Any] = {
            "socket_timeout": CLIENT_TIMEOUT,
            "socket_connect_timeout": CLIENT_TIMEOUT,
            "decode_responses": True,
            **self.connection_kwargs,
            **kwargs,
        }
        return redis.Redis(HOST, port, **options)

    def sentinel_client(self, port: int) -> redis.Redis:
        """A client of the sentinel on ``port``, logged in; close it when done."""
        return redis.Redis(
            HOST,
            port,
            socket_timeout=CLIENT_TIMEOUT,
            socket_connect_timeout=CLIENT_TIMEOUT,
            decode_responses=True,
            **self.sentinel_kwargs,
        )

    # -- configuration -----------------------------------------------------------------

    def data_config(self, node: Node, replica_of: Address | None) -> str:
        """The config file of a data node; ``replica_of``: its master, None for the master."""
        lines = [
            f"port {node.port}",
            f"bind {HOST}",
            f"dir {_quoted(str(node.workdir))}",
            f"logfile {_quoted(str(node.log))}",
            'save ""',
            "appendonly yes",
            "appendfsync everysec",
            "maxmemory-policy noeviction",
            "min-replicas-to-write 1",
            "min-replicas-max-lag 10",
            "repl-diskless-sync-delay 0",  # a replica (re)joining syncs at once, not 5 s later
        ]
        if self.password is not None:
            lines += [f"requirepass {_quoted(self.password)}", f"masterauth {_quoted(self.password)}"]
            if self.username is not None:  # an ACL user beside the default one, for every connection
                lines.append(f"user {self.username} on {_quoted('>' + self.password)} ~* &* +@all")
                lines.append(f"masteruser {_quoted(self.username)}")
        if replica_of is not None:
            lines.append(f"replicaof {replica_of.host} {replica_of.port}")
        return "\n".join(lines) + "\n"

    def sentinel_config(self, node: Node, master: Address) -> str:
        """The config file of a sentinel watching ``master``."""
        name = self.master_name
        lines = [
            f"port {node.port}",
            f"bind {HOST}",
            f"dir {_quoted(str(node.workdir))}",
            f"logfile {_quoted(str(node.log))}",
            f"sentinel monitor {name} {master.host} {master.port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password is not None:
            if self.username is not None:
                lines.append(f"sentinel auth-user {name} {_quoted(self.username)}")
            lines.append(f"sentinel auth-pass {name} {_quoted(self.password)}")
        if self.sentinel_password is not None:
            lines.append(f"requirepass {_quoted(self.sentinel_password)}")  # also what sentinels show each other
        return "\n".join(lines) + "\n"

    # -- starting and stopping ---------------------------------------------------------

    def start(self) -> LocalSentinelGroup:
        """Start the master, its replicas, then the sentinels; return once every sentinel knows
        every replica and every other sentinel (before that, a failover could not be voted)."""
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_all(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        master, *replicas = self.data_nodes
        for node in self.data_nodes:
            node.conf.write_text(self.data_config(node, None if node is master else master.address))
            self._spawn(node)
        for node in self.data_nodes:
            self._wait_answers(node, deadline)
        self._wait(lambda: self._online_replicas(master.port) >= len(replicas) or None, deadline, "the replicas")
        for node in self.sentinel_nodes:
            node.conf.write_text(self.sentinel_config(node, master.address))
            self._spawn(node)
        for node in self.sentinel_nodes:
            self._wait_answers(node, deadline)
        self._wait(lambda: self._sentinels_agree(len(replicas)), deadline, "the sentinels to know each other")

    def _spawn(self, node: Node) -> None:
        args = [self.binary, str(node.conf)] + (["--sentinel"] if node.kind == "sentinel" else [])
        node.frozen = False
        node.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C at the terminal is not a fault the test asked for
            preexec_fn=parent_death_preexec() if self.die_with_parent else None,
        )

    def stop(self) -> None:
        """Stop every process this group started, by its id: SIGCONT to a frozen one, SIGTERM,
        then SIGKILL to whatever still runs after :data:`STOP_GRACE` seconds. Safe to call twice."""
        self._timers.cancel()
        nodes = [node for node in [*self.sentinel_nodes, *self.data_nodes] if node.running]
        for node in nodes:
            if node.frozen:
                node.send(signal.SIGCONT)
                node.frozen = False
            node.send(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for node in nodes:
            assert node.proc is not None
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.send(signal.SIGKILL)
                node.proc.wait()

    def close(self) -> None:
        """:meth:`stop`, and remove the group's directory if the group made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalSentinelGroup:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def logs(self, tail: int = 3000) -> str:
        """The end of every process's log, for a failure message."""
        parts = []
        for node in [*self.data_nodes, *self.sentinel_nodes]:
            parts.append(f"----- {node.workdir.name} ({node.port}) -----\n{self._log_tail(node, tail)}")
        return "\n".join(parts)

    # -- what the sentinels and nodes say ------------------------------------------------

    def master_address(self) -> Address:
        """The master that a majority of the sentinels name, as redis-py's ``Sentinel`` finds it.

        Raises :class:`~mutitask_celery.errors.BrokerUnavailable` while they do not agree (in
        the middle of a failover, say).
        """
        views = Counter(view.address for view in self.sentinel_views() if view is not None and view.usable)
        if views:
            address, count = views.most_common(1)[0]
            if count > len(self.sentinel_nodes) // 2:
                return address
        raise BrokerUnavailable(f"the sentinels of {self.master_name!r} do not agree on a master: {dict(views)}")

    def sentinel_views(self) -> list[SentinelView | None]:
        """What each sentinel says of the master (None: it did not answer).

        From ``SENTINEL MASTER``, which clients read, not ``GET-MASTER-ADDR-BY-NAME``: the
        sentinel leading a failover answers the latter with the replica it promotes as soon
        as it has, while its ``SENTINEL MASTER`` names the old master until the failover ends.
        """
        return [self._sentinel_view(node.port) for node in self.sentinel_nodes]

    def _sentinel_view(self, port: int) -> SentinelView | None:
        try:
            with self.sentinel_client(port) as client:
                state = client.sentinel_master(self.master_name)
        except redis.RedisError:
            return None
        return SentinelView(Address(str(state["ip"]), int(state["port"])), frozenset(str(state["flags"]).split(",")))

    def role(self, port: int) -> list[Any] | None:
        """What the data node on ``port`` answers to ``ROLE`` (None: it does not answer).

        ``["master", offset, [[host, port, offset], ...]]`` lists only replicas in sync;
        ``["slave", host, port, state, offset]`` has state ``connected`` once it is.
        """
        try:
            with self.data_client(port) as client:
                return list(client.role())
        except redis.RedisError:
            return None

    def _online_replicas(self, port: int) -> int:
        role = self.role(port)
        return len(role[2]) if role and role[0] == "master" else 0

    def _sentinels_agree(self, replicas: int) -> bool | None:
        for node in self.sentinel_nodes:
            try:
                with self.sentinel_client(node.port) as client:
                    state = client.sentinel_master(self.master_name)
            except redis.RedisError:
                return None
            others = len(self.sentinel_nodes) - 1
            if state["num-slaves"] < replicas or state["num-other-sentinels"] < others:
                return None
        return True

    # -- faults --------------------------------------------------------------------------

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` and reap it: a crash, no goodbye to anyone."""
        node = self.node(port)
        if node.running:
            assert node.proc is not None
            node.send(signal.SIGKILL)
            node.proc.wait()
        node.frozen = False

    def kill_master(self) -> Address:
        """SIGKILL the master the sentinels name; returns its address."""
        address = self.master_address()
        self.kill(address.port)
        return address

    def restart_node(self, port: int, deadline: float | None = None) -> Node:
        """Start the node on ``port`` again (it must be stopped), from its config file as
        Sentinel last rewrote it, and wait until it answers (its append-only file loaded)."""
        node = self.node(port)
        if node.running:
            raise RuntimeError(f"{node.workdir.name} ({port}) still runs: kill it first")
        self._spawn(node)
        self._wait_answers(node, deadline)
        return node

    def failover(self, deadline: float | None = None) -> Address:
        """``SENTINEL FAILOVER``: promote a replica without waiting for agreement; returns the
        old master's address. Asks each sentinel in turn until one accepts: one refuses
        while a failover is in progress, or before it has judged a replica fit (``NOGOODSLAVE``,
        for a few seconds after the last failover)."""
        old = self.master_address()
        refusals: list[str] = []

        def ask() -> bool | None:
            for node in self.sentinel_nodes:
                try:
                    with self.sentinel_client(node.port) as client:
                        client.execute_command("SENTINEL FAILOVER", self.master_name)
                    return True
                except redis.RedisError as error:
                    refusals.append(f"{node.port}: {error}")
            return None

        try:
            self._wait(ask, deadline, "a sentinel to accept SENTINEL FAILOVER")
        except TimeoutError as error:
            raise TimeoutError(f"{error}; the last refusals: {refusals[-3:]}") from None
        return old

    def freeze(self, port: int) -> None:
        """SIGSTOP the node on ``port``: it holds its connections and answers nothing, as a
        host that hangs (a paused VM, a stalled disk) does."""
        node = self.node(port)
        node.send(signal.SIGSTOP)
        node.frozen = True

    def thaw(self, port: int) -> None:
        """SIGCONT the node on ``port``, after :meth:`freeze`."""
        node = self.node(port)
        node.send(signal.SIGCONT)
        node.frozen = False

    def freeze_master(self, seconds: float) -> Address:
        """Freeze the master the sentinels name for ``seconds``, then thaw it (in a timer
        thread, so this returns at once and the caller can watch the failover); returns its
        address. :meth:`stop` thaws it early."""
        address = self.master_address()
        self.freeze(address.port)
        self._timers.add(seconds, lambda: self.thaw(address.port))
        return address

    # -- waits ---------------------------------------------------------------------------

    def wait_promoted(self, old_address: Address | tuple[str, int], deadline: float | None = None) -> Address:
        """Wait until the sentinels name a master other than ``old_address`` and it answers
        ``ROLE`` as a master with a replica in sync; return it.

        Every sentinel that answers (a majority at least) must name it, with no failover
        under way: any sentinel a client asks then leads it to the new master, which takes
        writes (``min-replicas-to-write 1``). ``deadline``: a ``time.monotonic()`` instant
        (default :data:`WAIT_TIMEOUT` seconds from now).
        """
        old = Address(*old_address)

        def promoted() -> Address | None:
            views = [view for view in self.sentinel_views() if view is not None]
            named = {view.address for view in views}
            if len(views) <= len(self.sentinel_nodes) // 2 or len(named) != 1 or not all(v.settled for v in views):
                return None
            new = named.pop()
            return new if new != old and self._online_replicas(new.port) >= 1 else None

        return self._wait(promoted, deadline, f"a master other than {old}")

    def wait_replica(self, port: int, deadline: float | None = None) -> Address:
        """Wait until the data node on ``port`` is a replica, in sync, of the master the
        sentinels name; return that master. ``deadline`` as for :meth:`wait_promoted`."""

        def replica() -> Address | None:
            role = self.role(port)
            if not role or role[0] != "slave" or role[3] != "connected":
                return None
            master = Address(str(role[1]), int(role[2]))
            try:
                return master if master == self.master_address() else None
            except BrokerUnavailable:
                return None

        return self._wait(replica, deadline, f"{HOST}:{port} to replicate the master")

    def _wait_answers(self, node: Node, deadline: float | None) -> None:
        """Until the node answers PING (not LOADING), or raise with its log if it exits."""

        def answers() -> bool | None:
            if not node.running:
                raise BrokerUnavailable(f"{node.workdir.name} ({node.port}) exited:\n{self._log_tail(node)}")
            client = self.sentinel_client(node.port) if node.kind == "sentinel" else self.data_client(node.port)
            try:
                with client:
                    return bool(client.ping()) or None
            except redis.RedisError:  # ConnectionError before it listens, BusyLoadingError while it loads
                return None

        self._wait(answers, deadline, f"{node.workdir.name} ({node.port}) to answer")

    def _wait(self, probe: Callable[[], T | None], deadline: float | None, what: str) -> T:
        """Poll ``probe`` with growing delays until it returns something, or raise
        ``TimeoutError`` at ``deadline`` (a ``time.monotonic()`` instant)."""
        if deadline is None:
            deadline = time.monotonic() + WAIT_TIMEOUT
        delay = 0.02
        while True:
            found = probe()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what} (logs under {self.workdir})")
            time.sleep(delay)  # polling with a deadline: Redis has no event for "promoted"
            delay = min(delay * 1.5, 0.25)

    @staticmethod
    def _log_tail(node: Node, tail: int = 2000) -> str:
        return node.log.read_text(errors="replace")[-tail:] if node.log.exists() else "(no log)"


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (the kernel may hand one out twice once it is closed)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports
