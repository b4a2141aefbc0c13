"""The operator console of the server: the original's commands, parsed safely.

Every line is split on spaces; the command is looked up in one table that
also drives ``help``. A bad line prints a message and changes nothing: the
console never raises into the run.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from mutitask_celery.books.cancels import NothingToCancel
from mutitask_celery.books.dead_letters import RedisDeadLetterStore
from mutitask_celery.books.rate_limits import RateLimits, describe, parse_rate
from mutitask_celery.control import VERBS, Devices
from mutitask_celery.errors import ConfigurationError, MutitaskError
from mutitask_celery.serving.producer import Producer
from mutitask_celery.tables import format_devices

log = logging.getLogger(__name__)

PROMPT = "mutitask> "


class ConsoleError(MutitaskError, ValueError):
    """A console line that cannot be run (its message is shown to the operator)."""


@dataclass(frozen=True)
class Command:
    name: str
    params: tuple[str, ...]  # each a non-negative integer, but RATE: a rate limit (a number, or off)
    help: str
    run: Callable[[list[Any]], str | None]


class Console:
    """Executes console lines against a running producer and the dead-letter store."""

    def __init__(
        self,
        producer: Producer,
        store: RedisDeadLetterStore,
        devices: Devices,
        out: TextIO | None = None,
        rates: RateLimits | None = None,
    ) -> None:
        self.producer = producer
        self.store = store
        self.devices = devices
        self.rates = rates  # None: no rate command (a console without the books' Redis)
        self.out = out or sys.stdout
        self.stopped = False
        table = [
            Command("help", (), "list the commands (help COMMAND: one of them)", lambda a: self._help()),
            Command(
                "detect_all",
                (),
                "status of every device (1 running, 0 paused, -1 off-line)",
                lambda a: self._detect(None),
            ),
            Command("detect_one", ("N",), "status of device N", lambda a: self._detect(a[0])),
            Command("add_device", (), "expect one device more", lambda a: self._expect(+1)),
            Command("del_device", (), "expect one device fewer (the last)", lambda a: self._expect(-1)),
            Command(
                "pause_all",
                (),
                "every device stops taking new tasks (the task in hand finishes)",
                lambda a: self._control("pause", None),
            ),
            Command("pause_one", ("N",), "device N stops taking new tasks", lambda a: self._control("pause", a[0])),
            Command("start_all", (), "every device takes tasks again", lambda a: self._control("start", None)),
            Command("start_one", ("N",), "device N takes tasks again", lambda a: self._control("start", a[0])),
            Command(
                "stop_all",
                (),
                "every device finishes its task in hand and goes off-line",
                lambda a: self._control("stop", None),
            ),
            Command(
                "stop_one",
                ("N",),
                "device N finishes its task in hand and goes off-line",
                lambda a: self._control("stop", a[0]),
            ),
            Command(
                "detect_fail_task_channel",
                ("C",),
                "how many failed tasks channel C holds",
                lambda a: f"channel {a[0]}: {self.store.count(a[0])} failed task(s)",
            ),
            Command(
                "reload_all_fail_channel",
                (),
                "every failed task back into its channel",
                lambda a: f"reloaded {self.store.reload()} task(s)",
            ),
            Command(
                "reload_one_fail_channel_all_task",
                ("C",),
                "every failed task of channel C back",
                lambda a: f"reloaded {self.store.reload(a[0])} task(s) of channel {a[0]}",
            ),
            Command(
                "reload_one_fail_channel_one_task",
                ("C", "I"),
                "failed task number I (from 0) of channel C back",
                lambda a: self._one(a, reload=True),
            ),
            Command(
                "del_one_task_by_fail_channel",
                ("C", "I"),
                "delete failed task number I (from 0) of channel C",
                lambda a: self._one(a, reload=False),
            ),
            Command(
                "pause_allot",
                (),
                "stop pulling tasks from the generators for now",
                lambda a: self._allot(self.producer.pause_feeding, "paused"),
            ),
            Command(
                "start_allot",
                (),
                "resume pulling tasks from the generators",
                lambda a: self._allot(self.producer.resume_feeding, "resumed"),
            ),
            Command(
                "stop_allot",
                (),
                "stop pulling tasks for good (the run ends when the rest finish)",
                lambda a: self._allot(self.producer.stop_feeding, "stopped for good"),
            ),
            Command("reset_task_max", ("N",), "most tasks outstanding per channel (ChannelSize)", self._reset_size),
            Command(
                "rate",
                ("C", "RATE"),
                "at most RATE tasks a second start on channel C, all devices together (rate C off: no limit)",
                self._rate,
            ),
            Command(
                "cancel",
                ("C",),
                "cancel channel C's run: waiting tasks are recorded cancelled, devices start none",
                self._cancel,
            ),
            Command("stop", (), "stop every device and the server", lambda a: self._stop()),
        ]
        self.commands = {c.name: c for c in table}
        aliases = {"reset_max_task": "reset_task_max", "exit": "stop", "quit": "stop"}
        for alias, name in aliases.items():
            self.commands[alias] = self.commands[name]

    def _cancel(self, args: list[Any]) -> str:
        try:
            return self.producer.cancels.cancel(args[0]).line()
        except NothingToCancel as exc:
            raise ConsoleError(str(exc)) from None

    # -- parsing ----------------------------------------------------------------
    def parse(self, line: str) -> tuple[Command, list[Any]] | None:
        words = line.split()
        if not words:
            return None
        if words[0] == "help" and len(words) == 2:
            return Command("help", (), "", lambda a: self._help_one(words[1])), []
        command = self.commands.get(words[0])
        if command is None:
            raise ConsoleError(f"unknown command {words[0]!r} (type help for the list)")
        args = words[1:]
        if len(args) != len(command.params):
            usage = " ".join([command.name, *command.params])
            raise ConsoleError(f"usage: {usage}")
        numbers: list[Any] = []
        for name, text in zip(command.params, args, strict=True):
            if name == "RATE":
                try:
                    numbers.append(parse_rate(text))
                except ConfigurationError as exc:
                    raise ConsoleError(f"{command.name}: {exc}") from None
                continue
            if not text.isdigit():
                raise ConsoleError(f"{command.name}: {name} must be a non-negative integer, got {text!r}")
            numbers.append(int(text))
        return command, numbers

    def execute(self, line: str) -> bool:
        """Run one line; returns False once the operator asked to stop."""
        try:
            parsed = self.parse(line)
            if parsed is not None:
                command, args = parsed
                message = command.run(args)
                if message:
                    self.say(message)
        except ConsoleError as exc:
            self.say(str(exc))
        except Exception as exc:  # a console line must never take the server down
            log.exception("console command %r failed", line)
            self.say(f"error: {exc}")
        return not self.stopped

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- commands ---------------------------------------------------------------
    def _help(self) -> str:
        seen = []
        for command in self.commands.values():
            if command not in seen:
                seen.append(command)
        width = max(len(" ".join([c.name, *c.params])) for c in seen)
        return "\n".join(f"  {' '.join([c.name, *c.params]):<{width}}  {c.help}" for c in seen)

    def _help_one(self, name: str) -> str:
        command = self.commands.get(name)
        if command is None:
            raise ConsoleError(f"unknown command {name!r} (type help for the list)")
        return f"{' '.join([command.name, *command.params])}: {command.help}"

    def complete(self, text: str) -> list[str]:
        """Command names starting with ``text`` (for tab completion)."""
        return sorted(name for name in self.commands if name.startswith(text))

    def _detect(self, number: int | None) -> str:
        found = self.devices.devices()
        if number is not None:
            found = [d for d in found if d.name.split("@", 1)[0] == f"device{number}"]
            if not found:
                return f"device{number}: -1 offline (never seen)"
            return format_devices(found)
        table = format_devices(found) if found else "no device has started yet"
        return table if self.rates is None else f"{table}\n{describe(self.rates.all())}"

    def _expect(self, step: int) -> str:
        count = max(0, self.devices.expected() + step)
        self.devices.set_expected(count)
        return f"expecting {count} device(s)"

    def _control(self, action: str, number: int | None) -> str:
        selectors = None if number is None else [number]
        done = self.devices.apply(action, selectors)
        verb = VERBS[action]
        if not done:
            return (
                f"no device answered ({verb} none; the wish is kept for when they come)"
                if action != "stop"
                else "no device was online to stop"
            )
        return f"{verb}: {', '.join(done)}"

    def _one(self, args: list[int], reload: bool) -> str:
        channel, index = args
        ids = self.store.ids_at(channel, [index])
        if not ids:
            raise ConsoleError(
                f"channel {channel} has no failed task number {index} (it holds {self.store.count(channel)})"
            )
        if reload:
            return f"reloaded {self.store.reload(channel, ids)} task(s)"
        return f"deleted {self.store.delete(channel, ids)} task(s)"

    def _allot(self, action: Callable[[], None], what: str) -> str:
        action()
        return f"pulling tasks {what}"

    def _reset_size(self, args: list[int]) -> str:
        if args[0] < 1:
            raise ConsoleError("reset_task_max: N must be at least 1")
        self.producer.channel_size = args[0]
        return f"at most {args[0]} task(s) outstanding per channel"

    def _rates(self) -> RateLimits:
        if self.rates is None:
            raise ConsoleError("rate: this console has no rate limits to set")
        return self.rates

    def _rate(self, args: list[Any]) -> str:
        channel, rate = args
        if channel < 1:
            raise ConsoleError("rate: C must be a channel number, 1 or more")
        self._rates().set(channel, rate)
        return f"channel {channel}: " + ("no rate limit" if rate is None else f"at most {rate:g} task(s) a second")

    def _stop(self) -> str:
        self.stopped = True
        self.producer.stop()
        report = self.devices.stop_report(None)
        still = "".join(
            f"; {name} is still stopping, it runs {'; '.join(r.describe() for r in running) or 'no known task'}"
            for name, running in report.stopping.items()
        )
        return f"stopped {len(report.stopped)} device(s){still}; stopping the server"
