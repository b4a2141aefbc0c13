"""Progress while a run goes: a live bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import socket
import struct
import subprocess
import sys
import termios
import threading

import redis
from helpers.paths import ROOT, SCRIPTS
from helpers.processes import Processes
from helpers.waits import device_is_up, wait_until

from mutitask_celery.serving import progress
from mutitask_celery.serving.producer import ChannelSummary, RunSummary

D1 = f"device1@{socket.gethostname()}"


def summary(published: int, succeeded: int, failed: int = 0) -> RunSummary:
    return RunSummary({1: ChannelSummary(1, published=published, succeeded=succeeded, failed=failed)})


def test_rate_and_time_left_follow_the_books() -> None:
    clock = [100.0]
    meter = progress.Meter({1: 1000}, clock=lambda: clock[0])
    meter.read(summary(100, 0), {})
    clock[0] += 10
    (line,) = meter.read(summary(300, 190, 10), {})
    assert (line.done, line.failed, line.rate, line.total) == (200, 10, 20.0, 1000)
    assert line.left == 40.0 and line.fraction == 0.2
    assert line.text() == "channel 1: published 300, done 200/1000 (10 failed), 20.0 tasks/s, 0:40 left"
    assert progress.bar(line.fraction, 12) == "[##........]"


def test_a_generator_of_unknown_length_has_a_total_once_it_ends() -> None:
    clock = [0.0]
    meter = progress.Meter({1: None}, clock=lambda: clock[0])
    meter.read(summary(50, 0), {1: False})
    clock[0] += 5
    (line,) = meter.read(summary(80, 30), {1: False})
    assert line.total is None and line.left is None and line.text().endswith("? left")
    clock[0] += 5
    (line,) = meter.read(summary(90, 60), {1: True})  # the generator is exhausted: 90 in all
    assert line.total == 90 and line.left == 5.0


def test_the_bar_draws_in_the_bottom_line_and_gives_the_screen_back() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    display = progress.choose("auto", out, channels=1, every=None)
    assert isinstance(display, progress.TerminalBar)
    display._size = lambda: os.terminal_size((160, 24))  # type: ignore[method-assign]
    display.show([progress.ChannelProgress(1, 10, 5, 1, 2.5, 10)])
    drawn = out.getvalue()
    assert "\x1b[1;23r" in drawn  # everything above the last line scrolls
    assert "\x1b[24;1H\x1b[2K[" in drawn and "channel 1: published 10, done 5/10 (1 failed)" in drawn
    display.close()
    assert out.getvalue().endswith("\x1b[24;1H\x1b[2K\x1b[r\x1b8")  # cleared, whole screen scrolls again
    assert isinstance(progress.choose("auto", io.StringIO(), 1, 3.0), progress.LogLines)
    assert progress.choose("off", out, 1, None) is None


def test_log_lines_when_the_output_is_not_a_terminal(procs: Processes, r: redis.Redis) -> None:
    procs.device(1, 1, "slow", env={"SLOW_SECONDS": "0.05"})
    wait_until(device_is_up(D1), 30, "device1")
    server = procs.python(SCRIPTS / "server.py", "60", "5", name="server", env={"MUTITASK_PROGRESS_EVERY": "0.3"})
    assert server.wait(60) == 0
    out = procs.output(server)
    lines = [line for line in out.splitlines() if "mutitask_celery.serving.progress: channel 1: published" in line]
    assert len(lines) >= 2, out
    assert " INFO " in lines[0] and "tasks/s" in lines[0]
    assert "\x1b[" not in out  # no terminal codes in a log


def test_live_bar_on_a_terminal_keeps_the_console_usable(procs: Processes, r: redis.Redis) -> None:
    procs.device(1, 1, "slow", env={"SLOW_SECONDS": "0.05"})
    wait_until(device_is_up(D1), 30, "device1")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(SCRIPTS)]), "TERM": "xterm"}
    server = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "server.py"), "100", "5"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        start_new_session=True,
    )
    procs.adopt(server)
    os.close(follower)
    seen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def shows(text: bytes) -> bool:
        return text in seen

    try:
        wait_until(lambda: shows(b"\x1b[1;23r"), 30, "the bar's scroll region")
        wait_until(lambda: shows(b"channel 1: published"), 30, "the bar")
        os.write(leader, b"detect_all\n")  # the console answers while the bar is drawn
        wait_until(lambda: shows(f"{D1}  1     running".encode()), 30, "the console's answer")
        os.write(leader, b"stop\n")
        assert server.wait(60) == 0
        reader.join(10)
    finally:
        os.close(leader)
    assert b"\x1b[r" in seen  # the whole screen scrolls again after the run
    assert b"Traceback" not in seen
