"""Books that go backwards: a Redis that comes back without its data stops the run with one
clear error and a non-zero exit, on the server and on every device, never a summary with
negative counts (mutitask_celery/books/integrity.py)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import redis
from helpers.paths import SCRIPTS
from helpers.processes import Processes
from helpers.waits import wait_until

from mutitask_celery import keys
from mutitask_celery.books.integrity import Watermarks
from mutitask_celery.errors import BooksLost, ExitCode
from mutitask_celery.tools.localredis import LocalRedis, free_port
from mutitask_celery.tools.processes import worker_command

# Celery 5.7 / kombu 5.7: a worker whose BRPOP is pending with a message unacked when Redis goes
# away may die restoring it ("Unrecoverable error: AttributeError(...'hostname')"); see the closing
# note of issue 17. It has nothing to do with the books; the test does not count that device.
KOMBU_RACE = "Unrecoverable error: AttributeError"
ENV = {"MUTITASK_DEAD_AFTER": "3", "PACE_SECONDS": "0.005", "MUTITASK_BROKER_URL": ""}


@pytest.mark.timeout(300)
def test_redis_back_without_its_data_stops_server_and_devices(procs: Processes, tmp_path: Path) -> None:
    port = free_port()
    first = LocalRedis(workdir=tmp_path / "a", appendonly=False, port=port)
    (tmp_path / "a").mkdir()
    first.start()
    second: LocalRedis | None = None
    try:
        env = {**ENV, "MUTITASK_REDIS_URL": first.url}
        devices = [procs.device(n, 1, "paced", env=env) for n in (1, 2)]
        devices.append(
            procs.start(
                worker_command("device3@%h", include="channel_one"),
                "celery-device3",
                env=env,
            )
        )
        server = procs.python(SCRIPTS / "server.py", "2000", name="server", env=env)
        wait_until(lambda: first_client_count(first) >= 300 and done_by_all(first), 120, "300 results")
        first.stop()  # no append-only file: Redis comes back empty
        (tmp_path / "b").mkdir()
        second = LocalRedis(workdir=tmp_path / "b", appendonly=False, port=port).start()
        assert server.wait(120) == ExitCode.BOOKS_LOST, procs.output(server)
        out = procs.output(server)
        assert re.search(r"Redis lost data since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", out), out
        assert "channel 1 succeeded was" in out and "Traceback" not in out
        assert "SUMMARY" not in out and not re.search(r"succeeded -\d", out)
        told = 0
        for device in devices:
            code = device.wait(60)
            output = procs.output(device)
            if code == 1 and KOMBU_RACE in output:
                continue  # died of the known kombu/Celery race when Redis went away, before it could tell
            assert code == ExitCode.BOOKS_LOST, output
            assert "Redis lost data since" in output
            told += 1
        assert told >= 1
    finally:
        procs.stop_all()
        first.close()
        if second is not None:
            second.close()


def first_client_count(server: LocalRedis) -> int:
    client = redis.Redis(port=server.port)
    try:
        return int(client.llen(keys.results(1)))
    finally:
        client.close()


def done_by_all(server: LocalRedis) -> bool:
    """Each of the three devices has finished a task (so each has a count to find lower)."""
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        return len(client.hkeys(keys.DEVICES_DONE)) == 3
    finally:
        client.close()


def test_watermarks_take_replies_out_of_order_for_no_loss() -> None:
    """Many threads add to one counter and check their replies; replies that come back in
    another order than the additions were applied must never look like a loss."""
    marks = Watermarks()
    counter = 0
    lock = threading.Lock()
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker() -> None:
        nonlocal counter
        barrier.wait()
        for _ in range(2000):
            before = marks.mark()
            with lock:
                counter += 1
                reply = counter
            try:  # the reply reaches the check after other threads' later replies
                marks.check({"done": reply}, {"done": before.get("done", 0) + 1})
            except BooksLost as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert marks.mark() == {"done": 16000}
    with pytest.raises(BooksLost, match="done was 16000, now 12"):
        marks.check({"done": 12}, marks.mark())


def test_a_retried_finish_seen_by_the_heartbeat_is_no_loss(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first try of a finish applies but its reply is lost (a network cut); the heartbeat
    sees the new count before the retry returns it: that is no loss of data."""
    from mutitask_celery import runtime
    from mutitask_celery.books.ledger import Outcome
    from mutitask_celery.device import lifecycle, tasks

    device = "device1@h"
    runtime.ledger().publish(1, [("t1", '"a"'), ("t2", '"b"')])
    life = lifecycle.DeviceLife(device)
    real = runtime.ledger().finish
    tries: list[int] = []

    def finish(*args: object, **kwargs: object) -> object:
        done = real(*args, **kwargs)  # type: ignore[arg-type]
        tries.append(1)
        if len(tries) == 1:
            life.beat()  # the heartbeat reads the count this try made, then...
            raise redis.TimeoutError("Timeout reading from socket")  # ...its reply is lost
        return done

    monkeypatch.setattr(runtime.ledger(), "finish", finish)
    monkeypatch.setattr(tasks.time, "sleep", lambda _: None)
    done = tasks._finish(life, tasks.Delivery(1, device, "m1", "run1"), [Outcome("t1", ok=True, result='"A"')], 0.0)
    assert len(tries) == 2 and done.succeeded == 1 and done.device_done == 1
    assert runtime.ledger().stats(1).duplicates == 0
