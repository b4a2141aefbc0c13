"""Leases: one process per device name, one server per channel and per run, enforced.

Two processes under one device name share its notes of what it holds, and the second one's
start takes back, unfenced, what the first one holds (so it runs twice); two servers on one
channel (or one named run) each publish the whole generator. Both were only written in the
guide. Now each such thing is a lease, a Redis string ``mutitask:lease:<what>`` (see
:mod:`.keys`) whose value names its holder (host, pid, a random token, since when) and
which expires unless its holder renews it:

* taken with one compare-and-set step (``lua/lease_take.lua``) before the process does
  anything under it: a device before it gives back what its name's previous life held, a
  server before it publishes;
* renewed every :data:`RENEW_EVERY` seconds by a thread of its own (``mutitask-lease``),
  which does nothing else, so no long duty makes it late; it expires ``ttl`` seconds
  (``dead_after``, 10 s) after its holder's last renewal, so a holder that dies (SIGKILL,
  a host gone) lets go by itself;
* renewed and released only with the holder's own value (``lua/lease_keep.lua``,
  ``lua/lease_release.lua``), never blindly: a process that lost its lease cannot
  remove or extend the new holder's;
* a lease that only lapsed (its holder was frozen, cut off, or Redis was away longer
  than the lease lasts) is taken back by its holder if nobody took it since
  (``lease:holders`` remembers the last taker, ``''`` once released); one that another
  process took, or released, is lost, and its old holder stops (:class:`LeaseLost`)
  instead of working beside the new one. A note gone with the rest of Redis's data (a
  restart without its append-only file) does not count as taken: the books' own checks
  stop the process then, with exit code 4 (:mod:`.integrity`). A server's publish step is
  fenced by its channel's lease in the same Lua step (``lua/publish.lua``), so even a
  server frozen past its lease's end publishes nothing once another server holds the
  channel.

Taking a lease another process holds: when that holder is a process of this very host
(same boot, same pid namespace) that no longer runs, it is taken over at once (a device or
server restarted right after a SIGKILL does not wait). Otherwise the taker watches it for
up to one lease period: a holder seen renewing it is alive, and the taker is refused at
once with :class:`LeaseHeld` naming the holder and what to do (exit code 5, ``IN_USE``);
a lease that is not renewed expires, and is taken. Refusing a live holder, rather than
waiting for it to let go, matters: a second copy of a run that waited for the first to end
would run it all again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import redis

from mutitask_celery.books import steps
from mutitask_celery.connection import text
from mutitask_celery.errors import LeaseHeld, LeaseLost
from mutitask_celery.keys import DEFAULT, Keys
from mutitask_celery.settings import DEFAULTS, HEARTBEAT

log = logging.getLogger(__name__)

RENEW_EVERY = HEARTBEAT  # seconds between renewals (a third of the lease's life if that is shorter)
RENEWED_SLACK = 0.25  # seconds a lease's time left may exceed what is expected before it counts as renewed
_mine: set[str] = set()  # tokens of the leases this process holds now (see Holder.gone)


@cache
def node() -> str:
    """This boot of this host and this pid namespace, as a short digest: a pid names the same
    process only within them (two containers may share a host name; a host that rebooted
    has other processes under the same pids). Empty where the system says neither."""
    parts = []
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16] if parts else ""


def running(pid: int) -> bool:
    """True while process ``pid`` of this host runs (a zombie, killed and not yet reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc here: kill() said it exists
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: the value of its key, as JSON."""

    host: str
    node: str  # see node()
    pid: int
    token: str  # random: tells this holding from any other, even by the same process
    since: float  # when it took the lease (the holder's clock)

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), node(), os.getpid(), uuid.uuid4().hex, time.time())

    @classmethod
    def parse(cls, value: str) -> Holder | None:
        """None for a value this version cannot read (the lease is held all the same)."""
        try:
            fields = json.loads(value)
            host, pid, token, since = fields["host"], fields["pid"], fields["token"], fields["since"]
            return cls(str(host), str(fields["node"]), int(pid), str(token), float(since))
        except (ValueError, TypeError, KeyError):
            return None

    @property
    def value(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host}, since {since}"

    def gone(self) -> bool:
        """True when the holder was a process of this host that no longer runs: its lease may be
        taken over at once. A holder elsewhere cannot be looked at: its lease must expire."""
        if self.host != socket.gethostname() or self.node != node():
            return False
        if self.pid == os.getpid():  # this process, or an earlier one under the same pid (pid 1 of a container)
            return self.token not in _mine
        return not running(self.pid)


def describe(value: str) -> str:
    """A lease's holder in words, from its key's value."""
    holder = Holder.parse(value)
    return holder.describe() if holder is not None else f"a holder this version cannot read ({value[:80]!r})"


class Lease:
    """One lease this process holds or wants: its key, what it guards (for messages), what to
    tell a process refused it, and this process's value."""

    def __init__(self, key: str, what: str, advice: str, ttl: float) -> None:
        self.key, self.what, self.advice = key, what, advice
        self.ttl_ms = max(1, round(ttl * 1000))
        self.holder = Holder.me()
        self.value = self.holder.value
        self.held = False

    def refused(self, value: str, how: str) -> LeaseHeld:
        """The error for a process refused this lease, held by ``value`` (``how``: what showed it alive)."""
        return LeaseHeld(
            f"{self.what} is in use by another live process: {describe(value)} ({how}; lease {self.key}). {self.advice}"
        )

    def lost(self, value: str) -> LeaseLost:
        """The error for this process once another one took its lease (``value``: the holder now, if any)."""
        who = describe(value) if value else "another process (which has let go since)"
        return LeaseLost(
            f"lease lost: {self.what} was taken over by {who} while this process ({self.holder.describe()}) "
            f"was out of reach for longer than its lease lasts ({self.ttl_ms / 1000:g}s): this process "
            f"stops rather than work beside it (lease {self.key})"
        )


class Leases:
    """The leases of one process (a device's name; a server's channels and run), renewed
    together by a thread of their own from the first one taken until :meth:`release`.

    ``on_lost`` is called (in that thread) with the error when a lease is lost; whoever
    works under the leases may also call :meth:`check`, which raises it.
    """

    def __init__(
        self,
        client: redis.Redis,
        ttl: float | None = None,
        on_lost: Callable[[LeaseHeld], None] | None = None,
        keys: Keys = DEFAULT,
    ) -> None:
        self.client, self.keys = client, keys
        self.ttl = ttl or DEFAULTS.dead_after
        self.on_lost = on_lost
        self.leases: list[Lease] = []
        self.lost: LeaseHeld | None = None
        self._take = steps.LEASE_TAKE.on(client)
        self._keep = steps.LEASE_KEEP.on(client)
        self._release = steps.LEASE_RELEASE.on(client)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a renewal round and the release never overlap
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()

    def get(self, key: str) -> Lease | None:
        """The lease of ``key`` this process holds, if any."""
        return next((lease for lease in self.leases if lease.key == key and lease.held), None)

    def take(self, key: str, what: str, advice: str, wait: float | None = None) -> Lease:
        """Take ``key``'s lease, or raise :class:`LeaseHeld` (see the module docstring).

        ``wait``: how long to watch a holder that might be dead (default: one lease period
        and a little, by when a holder that stopped renewing has let go). Raises a
        ``redis.RedisError`` when Redis cannot be asked.
        """
        lease = Lease(key, what, advice, self.ttl)
        wait = self.ttl + HEARTBEAT / 2 if wait is None else wait
        deadline = time.monotonic() + wait
        watched: tuple[str, float, float] | None = None  # (holder's value, its seconds left, when read)
        replace, delay = "", 0.05
        while True:
            taken, value, left = self._take_once(lease, replace)
            now = time.monotonic()
            if taken:
                return self._hold(lease)
            holder = Holder.parse(value)
            if holder is not None and holder.gone() and replace != value:
                log.warning("%s: its holder (%s) is gone: taking it over", what, holder.describe())
                replace = value
                continue
            replace = ""
            if watched is not None and watched[0] == value and left > watched[1] - (now - watched[2]) + RENEWED_SLACK:
                raise lease.refused(value, "it renews its lease")
            if watched is None or watched[0] != value:
                if watched is None:
                    log.warning("%s is held by %s: watching it for up to %.0fs", what, describe(value), deadline - now)
                watched = (value, left, now)
            if now >= deadline:
                raise lease.refused(value, f"still held after {wait:.0f}s")
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, RENEW_EVERY / 2)

    def _take_once(self, lease: Lease, replace: str = "") -> tuple[bool, str, float]:
        """One try (``lua/lease_take.lua``): (taken, the holder's value, its seconds left)."""
        taken, value, left_ms = self._take(
            lease=lease.key, holders=self.keys.lease_holders, value=lease.value, ttl=lease.ttl_ms, replaces=replace
        )
        return bool(int(taken)), text(value), int(left_ms) / 1000

    def want(self, key: str, what: str, advice: str) -> Lease:
        """A lease to take in the background (Redis could not be asked now): the renewing thread
        takes it when it is free or its holder gone, and reports :class:`LeaseHeld` otherwise."""
        lease = Lease(key, what, advice, self.ttl)
        self.leases.append(lease)
        self._start()
        return lease

    def _hold(self, lease: Lease) -> Lease:
        lease.held = True
        _mine.add(lease.holder.token)
        if lease not in self.leases:
            self.leases.append(lease)
        self._start()
        return lease

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mutitask-lease", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(min(RENEW_EVERY, self.ttl / 3)):
            try:
                self.keep()
            except redis.RedisError as exc:  # Redis away: a lapsed lease is taken back when it returns
                log.warning("could not renew %s: %s", ", ".join(lease.what for lease in self.leases), exc)
            except Exception:  # a bug must not silently stop the renewals: say it, go on
                log.exception("lease renewal failed")

    def keep(self) -> None:
        """One round of renewals (the thread's duty); a lost lease is reported, once."""
        with self._lock:
            if not self._stop.is_set():
                self._keep_all()

    def _keep_all(self) -> None:
        for lease in list(self.leases):
            if self.lost is not None:
                return
            if not lease.held:
                self._take_wanted(lease)
                continue
            kept, value = self._keep(
                lease=lease.key, holders=self.keys.lease_holders, value=lease.value, ttl=lease.ttl_ms
            )
            if not int(kept):
                self._drop(lease)
                self._report(lease.lost(text(value)))

    def _take_wanted(self, lease: Lease) -> None:
        taken, value, _ = self._take_once(lease)
        holder = Holder.parse(value)
        if not taken and holder is not None and holder.gone():
            taken, value, _ = self._take_once(lease, value)
        if taken:
            self._hold(lease)
            log.warning("%s: lease taken, now that Redis answers", lease.what)
        else:
            self.leases.remove(lease)
            self._report(lease.refused(value, "it held it when this process could first ask"))

    def _report(self, error: LeaseHeld) -> None:
        self.lost = error
        if self.on_lost is not None:
            self.on_lost(error)

    def check(self) -> None:
        """Raise the :class:`LeaseHeld` (:class:`LeaseLost`) a renewal found, if any."""
        if self.lost is not None:
            raise self.lost

    def _drop(self, lease: Lease) -> None:
        lease.held = False
        _mine.discard(lease.holder.token)
        if lease in self.leases:
            self.leases.remove(lease)

    def release(self) -> None:
        """Stop renewing and let go of every lease still held (a clean end)."""
        self._stop.set()
        with self._lock:
            for lease in list(self.leases):
                held = lease.held
                self._drop(lease)
                if not held:
                    continue
                try:
                    self._release(lease=lease.key, holders=self.keys.lease_holders, value=lease.value)
                except redis.RedisError as exc:  # it expires by itself
                    log.debug("could not release %s: %s", lease.what, exc)
