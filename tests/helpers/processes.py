"""Real processes for a test: each in a process group of its own, its output in a log file,
and all of them stopped by id afterwards (the ``procs`` fixture), even when the test fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, NamedTuple

from helpers.paths import ROOT, SCRIPTS
from mutitask_celery.tools.processes import stop_process_groups

_START = re.compile(r"^START (.*) (\d+(?:\.\d+)?)$")  # a task may hold spaces; then its start time


class Start(NamedTuple):
    """A task a helper device started, and when (its clock)."""

    task: str
    at: float


class Processes:
    """Starts real processes for a test and stops all of them afterwards."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(
        self,
        args: list[str],
        name: str,
        env: dict[str, str] | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        log = self.logdir / f"{name}.log"
        full_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(SCRIPTS)]),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=stdin,
                env=full_env,
                cwd=str(cwd or ROOT),
                start_new_session=True,
            )
        self.started.append((proc, log))
        return proc

    def adopt(self, proc: subprocess.Popen[bytes], name: str = "adopted") -> subprocess.Popen[bytes]:
        """A process the test started itself (e.g. on a terminal): stopped with the others."""
        log = self.logdir / f"{name}.log"
        log.touch()
        self.started.append((proc, log))
        return proc

    def python(self, script: str | Path, *args: str, name: str | None = None, **kw: Any) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, str(script), *args], name or Path(script).stem, **kw)

    def device(
        self, device_id: int, channel: int, behaviour: str = "double", *extra: str, **kw: Any
    ) -> subprocess.Popen[bytes]:
        """A legacy client script (tests/scripts/device.py) as device ``device_id``."""
        return self.python(
            SCRIPTS / "device.py",
            str(device_id),
            str(channel),
            behaviour,
            *extra,
            name=f"device{device_id}-ch{channel}",
            **kw,
        )

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        for p, log in self.started:
            if p is proc:
                return log.read_text(errors="replace")
        raise KeyError(proc)

    def starts(self, proc: subprocess.Popen[bytes], after: float = 0.0) -> list[Start]:
        """The tasks a 'slow' helper device started (its ``START <task> <time>`` lines), in
        order, those after ``after`` (a Unix time) if given."""
        found = []
        for line in self.output(proc).splitlines():
            match = _START.match(line)  # a line another writer broke into (Celery's log) is not one
            if match is not None and float(match.group(2)) > after:
                found.append(Start(match.group(1), float(match.group(2))))
        return found

    def stop_all(self) -> None:
        stop_process_groups(proc for proc, _ in self.started)
