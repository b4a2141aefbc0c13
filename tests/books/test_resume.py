"""Resumable runs: a server killed with SIGKILL and started again with the same script goes
on where it was; nothing is published twice, nothing is skipped."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess

import numpy as np
import pytest
import redis
from helpers.paths import SCRIPTS
from helpers.processes import Processes
from helpers.waits import wait_until

import mutitask_celery as mt
from mutitask_celery import keys, runtime
from mutitask_celery.books.runs import ResumeMismatch, RunRecord, check_run_name, fingerprint
from mutitask_celery.errors import ConfigurationError
from mutitask_celery.legacy.server import BaseConfig

COUNT = 1500


def summary_of(procs: Processes, server: subprocess.Popen[bytes]) -> dict[str, int]:
    line = [x for x in procs.output(server).splitlines() if x.startswith("SUMMARY ")][-1]
    summary: dict[str, int] = json.loads(line[len("SUMMARY ") :])["1"]
    return summary


def tasks_done() -> list[str]:
    return [task for _, task in mt.results(1, limit=None)]  # 'tag' devices save [tag, task]


def start_devices(procs: Processes) -> None:
    for n in (1, 2):
        procs.device(n, 1, "tag", env={"DEVICE_TAG": f"d{n}"})


def killed_mid_run(procs: Processes, *args: str) -> None:
    """Start the resumable server, and SIGKILL it once a fifth of the tasks are done."""
    server = procs.python(SCRIPTS / "resume_server.py", str(COUNT), *args, name="server-killed")
    wait_until(lambda: mt.results_count(1) >= COUNT // 5 or server.poll() is not None, 120, "the run to be under way")
    assert server.poll() is None, procs.output(server)
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    assert 0 < runtime.ledger().stats(1).published < COUNT  # killed in the middle


def test_names_and_flags_are_checked() -> None:
    for bad in ("", "a b", "x{y}", 3):
        with pytest.raises(ConfigurationError, match="run_name must be a short name"):
            check_run_name(bad)
    with pytest.raises(ConfigurationError, match="resume must be True or False"):
        BaseConfig(1, resume="yes")  # type: ignore[arg-type]
    assert fingerprint(["a", 1]) == fingerprint(["a", 1]) != fingerprint(["a", 2])


def test_a_killed_server_started_again_resumes_and_runs_every_task_once(procs: Processes, r: redis.Redis) -> None:
    start_devices(procs)
    killed_mid_run(procs)
    published_before = runtime.ledger().stats(1).published
    again = procs.python(SCRIPTS / "resume_server.py", str(COUNT), name="server-again")
    assert again.wait(180) == 0, procs.output(again)
    assert "resuming run 'default': channel 1 skips the" in procs.output(again)
    done = tasks_done()
    assert sorted(done, key=int) == [str(n) for n in range(COUNT)]  # complete, and each once
    stats = runtime.ledger().stats(1)
    assert stats.published == COUNT and stats.duplicates == 0  # nothing published twice
    summary = summary_of(procs, again)  # the whole run, both servers' parts
    assert (summary["published"], summary["succeeded"], summary["failed"]) == (COUNT, COUNT, 0)
    assert published_before < COUNT

    finished = procs.python(SCRIPTS / "resume_server.py", "30", name="server-fresh")  # a finished run starts afresh
    assert finished.wait(120) == 0, procs.output(finished)
    assert summary_of(procs, finished)["published"] == 30 and runtime.ledger().stats(1).published == COUNT + 30


def test_a_generator_that_yields_other_items_is_refused_and_fresh_starts_anew(procs: Processes, r: redis.Redis) -> None:
    start_devices(procs)
    killed_mid_run(procs)
    published = runtime.ledger().stats(1).published
    other = procs.python(SCRIPTS / "resume_server.py", str(COUNT), "--offset", "7", name="server-other")
    assert other.wait(120) == 2, procs.output(other)
    assert "channel 1's generator yields other first items than when the run began" in procs.output(other)
    assert runtime.ledger().stats(1).published == published  # refused before publishing anything
    fresh = procs.python(SCRIPTS / "resume_server.py", "40", "--offset", "7", "--fresh", name="server-fresh")
    assert fresh.wait(180) == 0, procs.output(fresh)
    assert runtime.ledger().outstanding(1) == 0  # the killed run's tasks were waited for too
    assert summary_of(procs, fresh)["published"] == 40
    assert mt.results_count(1) == published + 40  # every task of both runs saved, once
    assert runtime.ledger().stats(1).duplicates == 0


def fingerprint_of_0_2_0(images: list[np.ndarray]) -> str:
    """The fingerprint a run of 0.2.0 recorded for these first items, arrays as nested lists."""
    digest = hashlib.sha256()
    for a in images:
        tagged = {"__mt__": "ndarray", "dtype": a.dtype.str, "shape": list(a.shape), "v": a.tolist()}
        digest.update(json.dumps(tagged, separators=(",", ":")).encode() + b"\x00")
    return f"{len(images)}:{digest.hexdigest()}"


def test_a_run_of_arrays_begun_when_arrays_travelled_as_lists_is_resumed(r: redis.Redis) -> None:
    images = [np.full((4, 3), n, dtype=np.uint8) for n in range(10)]
    old = fingerprint_of_0_2_0(images[:3])
    assert old != fingerprint(images[:3])  # arrays changed form, and their fingerprint with them
    fields = {"state": "running", "channels": "1", "fingerprint:1": old, "taken:1": "5", "published:1": "5"}
    r.hset(keys.run("images"), mapping=fields)
    (source,), resumed = RunRecord(r, "images").begin([iter(images)], {}, resume=True)
    assert resumed.taken == {1: 5} and [int(a[0, 0]) for a in source] == [5, 6, 7, 8, 9]

    other = [np.full((4, 3), n + 1, dtype=np.uint8) for n in range(10)]
    with pytest.raises(ResumeMismatch, match="channel 1's generator yields other first items"):
        RunRecord(r, "images").begin([iter(other)], {}, resume=True)
