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
from typing import TextIO

from .errors import MutitaskError
from .producer import Producer
from .store import DeadLetterStore

log = logging.getLogger(__name__)

PROMPT = "mutitask> "


class ConsoleError(MutitaskError, ValueError):
    """A console line that cannot be run (its message is shown to the operator)."""


@dataclass(frozen=True)
class Command:
    name: str
    params: tuple[str, ...]  # each parameter is a non-negative integer
    help: str
    run: Callable[[list[int]], str | None]


class Console:
    """Executes console lines against a running producer and the dead-letter store."""

    def __init__(self, producer: Producer, store: DeadLetterStore, out: TextIO | None = None) -> None:
        self.producer = producer
        self.store = store
        self.out = out or sys.stdout
        self.stopped = False
        table = [
            Command("help", (), "list the commands", lambda a: self._help()),
            Command("detect_fail_task_channel", ("C",), "how many failed tasks channel C holds",
                    lambda a: f"channel {a[0]}: {self.store.count(a[0])} failed task(s)"),
            Command("reload_all_fail_channel", (), "every failed task back into its channel",
                    lambda a: f"reloaded {self.store.reload()} task(s)"),
            Command("reload_one_fail_channel_all_task", ("C",), "every failed task of channel C back",
                    lambda a: f"reloaded {self.store.reload(a[0])} task(s) of channel {a[0]}"),
            Command("reload_one_fail_channel_one_task", ("C", "I"), "failed task number I (from 0) of channel C back",
                    lambda a: self._one(a, reload=True)),
            Command("del_one_task_by_fail_channel", ("C", "I"), "delete failed task number I (from 0) of channel C",
                    lambda a: self._one(a, reload=False)),
            Command("pause_allot", (), "stop pulling tasks from the generators for now",
                    lambda a: self._allot(self.producer.pause_feeding, "paused")),
            Command("start_allot", (), "resume pulling tasks from the generators",
                    lambda a: self._allot(self.producer.resume_feeding, "resumed")),
            Command("stop_allot", (), "stop pulling tasks for good (the run ends when the rest finish)",
                    lambda a: self._allot(self.producer.stop_feeding, "stopped for good")),
            Command("reset_task_max", ("N",), "most tasks outstanding per channel (ChannelSize)",
                    self._reset_size),
            Command("stop", (), "end the run and leave the console", lambda a: self._stop()),
        ]
        self.commands = {c.name: c for c in table}
        aliases = {"reset_max_task": "reset_task_max", "exit": "stop", "quit": "stop"}
        for alias, name in aliases.items():
            self.commands[alias] = self.commands[name]

    # -- parsing ----------------------------------------------------------------
    def parse(self, line: str) -> tuple[Command, list[int]] | None:
        words = line.split()
        if not words:
            return None
        command = self.commands.get(words[0])
        if command is None:
            raise ConsoleError(f"unknown command {words[0]!r} (type help for the list)")
        args = words[1:]
        if len(args) != len(command.params):
            usage = " ".join([command.name, *command.params])
            raise ConsoleError(f"usage: {usage}")
        numbers = []
        for name, text in zip(command.params, args):
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

    def _one(self, args: list[int], reload: bool) -> str:
        channel, index = args
        ids = self.store.ids_at(channel, [index])
        if not ids:
            raise ConsoleError(f"channel {channel} has no failed task number {index} "
                               f"(it holds {self.store.count(channel)})")
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

    def _stop(self) -> str:
        self.stopped = True
        self.producer.stop()
        return "stopping"
