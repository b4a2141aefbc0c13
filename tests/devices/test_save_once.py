"""A user's save function is called at most once a task, however many times the task ran (a
device taken for dead that was only frozen, a message delivered twice); and a task buried as
'worker lost' while its device was only slow to answer (frozen, or one long C call holding the
GIL) gets its late success instead of the burial. Real devices, real SIGSTOP/SIGCONT."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers.processes import Processes
from helpers.runs import run_in_thread
from helpers.settings import FAST, fresh_settings
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import codec, keys, runtime
from mutitask_celery.books.ledger import Claimed
from mutitask_celery.books.recovery.reaper import Reaper
from mutitask_celery.control import Taken

HOST = socket.gethostname()


def saved(path: Path) -> list[str]:
    """The lines the devices' save function wrote (one a result), sorted."""
    return sorted(path.read_text().split()) if path.exists() else []


def freeze(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGSTOP)


def thaw(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGCONT)


def stat(r: redis.Redis, name: str) -> int:
    return int(r.hget(keys.stats(1), name) or 0)


def all_runs_finished(procs: Processes, devices: list[subprocess.Popen[bytes]], r: redis.Redis) -> bool:
    """Every task run a device started has reached the books (``timed`` counts each outcome,
    a run that came second included): a frozen device's late runs are over too."""
    started = sum(len(procs.starts(d)) for d in devices)
    return started > 0 and stat(r, "timed") >= started


def finish_run(thread: threading.Thread, out: dict[str, Any], within: float = 180) -> Any:
    thread.join(within)
    assert not thread.is_alive(), "the run did not complete"
    return out["summary"]


@pytest.mark.timeout(300)
def test_a_device_thawed_after_its_tasks_ran_elsewhere_does_not_save_them_again(
    procs: Processes, r: redis.Redis, tmp_path: Path, fast_reaper: None
) -> None:
    """Device 1 is frozen (SIGSTOP) twice in the middle of a task, each time long enough to be
    taken for dead: device 2 runs what it held and saves it; thawed, device 1 finishes its
    runs. Each result is saved once, and the runs that came second are counted."""
    save_file = tmp_path / "saved.txt"
    env = {**FAST, "SLOW_SECONDS": "1", "SAVE_FILE": str(save_file)}
    zombie = procs.device(1, 1, "slow", "--save-file", env=env)
    other = procs.device(2, 1, "slow", "--save-file", env=env)
    for n in (1, 2):
        wait_until(device_is_up(f"device{n}@{HOST}"), 30, f"device{n}")
    tasks = [f"t{n}" for n in range(24)]
    thread, out = run_in_thread(tasks, channel_size=10)
    seen = 0.0
    for _ in range(2):
        start = wait_until(lambda s=seen: procs.starts(zombie, after=s), 60, "device1 to start a task")[-1]
        freeze(zombie)
        wait_until(lambda: r.hlen(keys.inhand(f"device1@{HOST}")) == 0, 30, "device1's messages taken back")
        thaw(zombie)
        seen = start.at
    summary = finish_run(thread, out)
    wait_until(lambda: all_runs_finished(procs, [zombie, other], r), 60, "device1's late runs to end")
    assert saved(save_file) == sorted(tasks)  # each result saved exactly once
    assert summary.failed == 0 and mt.failed_count(1) == 0
    assert stat(r, "duplicates") >= 2  # the tasks device1 was running when frozen ran twice, and are counted


@pytest.mark.timeout(300)
def test_a_device_frozen_while_saving_gets_its_save_counted_when_it_comes_back(
    procs: Processes, r: redis.Redis, tmp_path: Path, fast_reaper: None
) -> None:
    """Device 1 is frozen inside its save function: the result may or may not be saved, so the
    reaper does not run the task again; it buries it as 'worker lost while saving'. Thawed,
    device 1 finishes saving, and its success replaces the burial."""
    save_file = tmp_path / "saved.txt"
    env = {**FAST, "SLOW_SECONDS": "0.05", "SAVE_FILE": str(save_file), "SAVE_SECONDS": "3"}
    zombie = procs.device(1, 1, "slow", "--save-file", env=env)
    wait_until(device_is_up(f"device1@{HOST}"), 30, "device1")
    tasks = ["slowsave", *[f"t{n}" for n in range(10)]]
    thread, out = run_in_thread(tasks, channel_size=10)
    wait_until(lambda: "SAVING slowsave" in procs.output(zombie), 60, "device1 to save the slow one")
    freeze(zombie)
    other = procs.device(2, 1, "slow", "--save-file", env=env)
    summary = finish_run(thread, out)  # device 2 runs the rest; the frozen save is buried meanwhile
    (record,) = mt.failed(1)
    assert record.data == "slowsave" and record.reason.startswith("worker lost while saving")
    assert summary.failed == 1
    thaw(zombie)
    wait_until(lambda: mt.failed_count(1) == 0, 60, "device1's late success to replace the burial")
    wait_until(lambda: all_runs_finished(procs, [zombie, other], r), 60, "device1's late runs to end")
    assert saved(save_file) == sorted(tasks)  # saved once: by device 1, never by a second run
    assert stat(r, "revived") == 1


@pytest.mark.timeout(300)
@pytest.mark.parametrize("save", ["default", "file"])
def test_a_task_holding_the_gil_past_dead_after_keeps_its_late_success(
    procs: Processes, r: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, save: str
) -> None:
    """One long C call holds the GIL on a threads-pool device, so its heartbeat thread cannot
    run: the device is taken for dead and, with MUTITASK_MAX_ATTEMPTS=1, the task buried as
    'worker lost'. The device lived: its result, when the call returns, replaces the burial."""
    monkeypatch.setenv("MUTITASK_DEAD_AFTER", "3")
    monkeypatch.setenv("MUTITASK_MAX_ATTEMPTS", "1")
    fresh_settings()
    save_file = tmp_path / "saved.txt"
    env = {**FAST, "MUTITASK_MAX_ATTEMPTS": "1", "GIL_N": "1e9", "SAVE_FILE": str(save_file)}
    device = procs.device(1, 1, "gil", *(["--save-file"] if save == "file" else []), env=env)
    wait_until(device_is_up(f"device1@{HOST}"), 30, "device1")
    tasks = ["gil0", "a", "b"]
    thread, out = run_in_thread(tasks, channel_size=10)
    wait_until(lambda: mt.failed_count(1) == 1, 120, "the GIL-holding task to be buried as worker lost")
    assert mt.failed(1)[0].reason.startswith("worker lost")
    finish_run(thread, out)
    wait_until(lambda: mt.failed_count(1) == 0, 120, "its late success to replace the burial")
    wait_until(lambda: all_runs_finished(procs, [device], r), 60, "every run to end")
    results = saved(save_file) if save == "file" else sorted(mt.results(1, limit=None))
    assert results == sorted(tasks)  # saved once, the late one included
    assert stat(r, "revived") == 1


@pytest.mark.parametrize("saving", [False, True])
def test_a_device_that_dies_holding_claims_loses_its_tasks_only_if_it_began_saving(
    r: redis.Redis, saving: bool
) -> None:
    """A device claims a message's tasks, then marks its claims saving just before it calls its
    save function. Dead before the mark (in the claim's round trip, say), it saved nothing:
    the tasks run again. Dead after it, a result may be saved: 'worker lost while saving'."""
    ledger = runtime.ledger()
    device, tag, ids = "device7@test", "tag-7", [f"task-{n}" for n in range(3)]
    ledger.publish(1, [(t, codec.encode(t)) for t in ids], batch=3)
    raw = r.rpop(keys.queue(1))  # device 7 took the message...
    envelope = json.loads(raw)
    message_id = envelope["headers"]["id"]
    r.hset(keys.KOMBU_UNACKED, tag, json.dumps([envelope, "", keys.queue(1)]))
    r.zadd(keys.KOMBU_UNACKED_INDEX, {tag: 1700000000.5})
    devices = runtime.devices()
    devices.heard(device, in_hand=Taken(message_id, tag, 3, 1))  # ...noted it...
    devices.started(device, 1, message_id)  # ...ran its tasks...
    assert ledger.claim(1, device, message_id, "run1", ids) == [Claimed.CLAIMED] * 3  # ...and claimed them
    if saving:
        assert ledger.mark_claims(1, device, message_id, "run1", ids, "saving") == ids
    reaper = runtime.recovery()
    assert isinstance(reaper, Reaper)
    reaper.recover(device)  # then it died
    assert r.hlen(keys.claims(1)) == 0
    if saving:
        assert sorted(str(f.data) for f in mt.failed(1)) == ids
        assert all(f.reason.startswith("worker lost while saving") for f in mt.failed(1))
        assert ledger.outstanding(1) == 0
    else:
        assert mt.failed_count(1) == 0 and ledger.outstanding(1) == 3
        assert r.llen(keys.queue(1)) == 3  # each back alone, to run again


def test_a_device_taken_for_dead_between_its_claim_and_its_mark_saves_nothing(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chaos soak behind Sentinel saw it: a device claims a message's tasks, a reaper takes
    it for dead (writes stalled on a replica rejoining) and gives its message back, freeing the
    claims not yet marked saving; the device's mark then marks none of them, and it must save
    none: the copies given back claim and save them. (Its mark repeated after a lost reply
    still counts what it did mark.)"""
    from mutitask_celery.device import tasks

    ledger = runtime.ledger()
    device, tag, ids = "device8@test", "tag-8", [f"task-{n}" for n in range(3)]
    ledger.publish(1, [(t, codec.encode(t)) for t in ids], batch=3)
    envelope = json.loads(r.rpop(keys.queue(1)))
    message_id = envelope["headers"]["id"]
    r.hset(keys.KOMBU_UNACKED, tag, json.dumps([envelope, "", keys.queue(1)]))
    r.zadd(keys.KOMBU_UNACKED_INDEX, {tag: 1700000000.5})
    devices = runtime.devices()
    devices.heard(device, in_hand=Taken(message_id, tag, 3, 1))
    devices.started(device, 1, message_id)
    reaper = runtime.recovery()
    assert isinstance(reaper, Reaper)
    mark = type(ledger).mark_claims

    def reaped_first(self: Any, *args: Any) -> Any:
        reaper.recover(device)  # taken for dead right between the claim and the mark
        return mark(self, *args)

    monkeypatch.setattr(type(ledger), "mark_claims", reaped_first)
    called: list[Any] = []
    outcomes = tasks.save_claimed(
        tasks.Delivery(1, device, message_id, "run1"), called.append, [tasks.ToSave(t, f"result {t}") for t in ids]
    )
    assert called == []  # nothing saved: the tasks went back, and run again elsewhere
    assert all(o.skipped for o in outcomes)
    assert ledger.outstanding(1) == 3 and r.llen(keys.queue(1)) == 3 and mt.failed_count(1) == 0


def test_a_mark_repeated_after_a_lost_reply_still_counts_its_own(r: redis.Redis) -> None:
    ledger = runtime.ledger()
    device, tag, ids = "device9@test", "tag-9", ["a", "b"]
    ledger.publish(1, [(t, codec.encode(t)) for t in ids], batch=2)
    envelope = json.loads(r.rpop(keys.queue(1)))
    message_id = envelope["headers"]["id"]
    r.hset(keys.KOMBU_UNACKED, tag, json.dumps([envelope, "", keys.queue(1)]))
    r.zadd(keys.KOMBU_UNACKED_INDEX, {tag: 1700000000.5})
    runtime.devices().heard(device, in_hand=Taken(message_id, tag, 2, 1))
    runtime.devices().started(device, 1, message_id)
    assert ledger.claim(1, device, message_id, "run1", ids) == [Claimed.CLAIMED] * 2
    assert ledger.mark_claims(1, device, message_id, "run1", ids, "saving") == ids
    assert ledger.mark_claims(1, device, message_id, "run1", ids, "saving") == ids  # the same reply again
    assert ledger.mark_claims(1, "device10@test", message_id, "run1", ids, "saving") == []  # not another's
    # the same message's second run on the same device (a failover lost kombu's pop) is another run
    assert ledger.claim(1, device, message_id, "run2", ids) == [Claimed.HELD_ELSEWHERE] * 2
    assert ledger.mark_claims(1, device, message_id, "run2", ids, "saving") == []


@pytest.mark.timeout(300)
def test_one_message_delivered_twice_to_the_same_device_is_saved_once(
    procs: Processes, r: redis.Redis, tmp_path: Path
) -> None:
    """After a Redis failover the new master may lack kombu's last pops (they are not confirmed),
    so the same message, delivery tag and all, can reach the device that already runs it. Its
    two runs go on side by side; only one may call the save function. (The chaos soak behind
    Sentinel saw a whole message saved twice this way.)"""
    save_file, release = tmp_path / "saved.txt", tmp_path / "release"
    thread, out = run_in_thread(["hold0"], channel_size=10)
    wait_until(lambda: r.llen(keys.queue(1)) == 1, 30, "the message to be published")
    r.rpush(keys.queue(1), r.lindex(keys.queue(1), 0) or b"")  # the copy a failover leaves behind
    env = {**FAST, "SAVE_FILE": str(save_file), "RELEASE_FILE": str(release)}
    device = procs.device(1, 1, "hold", "--save-file", "--concurrency", "2", env=env)
    wait_until(lambda: len(procs.starts(device)) == 2, 60, "both copies to start")
    release.touch()
    summary = finish_run(thread, out)
    wait_until(lambda: stat(r, "timed") >= 2, 60, "both runs to reach the books")
    assert saved(save_file) == ["hold0"]  # saved once
    assert summary.failed == 0 and stat(r, "duplicates") == 1
