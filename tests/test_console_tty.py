"""The server's console on a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import sys
from collections.abc import Callable

import redis
from conftest import HELPERS, Processes, wait_until


def test_console_on_a_terminal_runs_commands_and_ends_on_stop(procs: Processes, r: redis.Redis) -> None:
    procs.device(1, 1)
    leader, follower = pty.openpty()
    server = procs.start([sys.executable, str(HELPERS / "server.py"), "50", "5"], "server", stdin=follower)
    os.close(follower)

    def screen_has(text: str) -> Callable[[], bool]:  # the server's output so far holds text
        return lambda: text in procs.output(server)

    try:
        wait_until(screen_has("console ready"), 30, "the console prompt")
        os.write(leader, b"detect_fail_task_channel 1\n")
        os.write(leader, b"frobnicate\n")
        wait_until(screen_has("unknown command 'frobnicate'"), 30, "the unknown-command message")
        wait_until(lambda: r.hget("mutitask:stats:1", "published") == "50", 60, "every task to be published")
        wait_until(lambda: r.hlen("mutitask:pending:1") == 0, 60, "every task to finish")
        os.write(leader, b"stop\n")
        assert server.wait(30) == 0
    finally:
        os.close(leader)
    out = procs.output(server)
    assert "failed task(s)" in out and "channel 1: published 50" in out
    assert "Traceback" not in out
