"""The ``mutitask`` command, run as a real process against a real redis-server."""

from __future__ import annotations

import json
import subprocess
import sys

import redis

import mutitask_celery as mt
from mutitask_celery import codec, runtime
from mutitask_celery.books import messages
from mutitask_celery.books.ledger import Outcome
from mutitask_celery.tools.localredis import free_port


def mutitask(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mutitask_celery", *args, "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def make_failures(channel: int, values: list[object]) -> list[str]:
    items = [(messages.new_task_id(), codec.encode(v)) for v in values]
    runtime.ledger().publish(channel, items)
    runtime.ledger().finish(channel, "device1@h", [Outcome(i, ok=False, reason="returned None") for i, _ in items])
    return [i for i, _ in items]


def test_list_show_count(r: redis.Redis, redis_url: str) -> None:
    ids = make_failures(1, ["alpha", (1, 2)]) + make_failures(11, ["beta"])
    out = mutitask("failed", "list", url=redis_url)
    assert out.returncode == 0 and "returned None" in out.stdout and "alpha" in out.stdout
    listed = json.loads(mutitask("failed", "list", "--channel", "11", "--json", url=redis_url).stdout)
    assert [x["id"] for x in listed] == [ids[2]] and listed[0]["data"] == "beta"
    shown = json.loads(mutitask("failed", "show", ids[1], "--json", url=redis_url).stdout)
    assert shown["data"] == "(1, 2)" and shown["device"] == "device1@h" and shown["failures"] == 1
    assert json.loads(mutitask("failed", "count", "--json", url=redis_url).stdout) == {
        "total": 3,
        "channels": {"1": 2, "11": 1},
        "dropped": 0,
    }


def test_reload_and_delete(r: redis.Redis, redis_url: str) -> None:
    ids = make_failures(1, ["a", "b", "c"])
    out = mutitask("failed", "reload", ids[0], url=redis_url)
    assert out.returncode == 0 and out.stdout.strip() == "reloaded 1 failed task(s)"
    assert mt.failed_count(1) == 2 and runtime.ledger().outstanding(1) == 1
    assert json.loads(mutitask("failed", "delete", "--channel", "1", "--json", url=redis_url).stdout) == {"deleted": 2}
    assert mt.failed_count() == 0


def test_exit_codes(r: redis.Redis, redis_url: str) -> None:
    missing = mutitask("failed", "show", "no-such-id", url=redis_url)
    assert missing.returncode == 1 and "no failed task with id no-such-id" in missing.stderr
    assert mutitask("failed", "reload", "no-such-id", url=redis_url).returncode == 1
    unsaid = mutitask("failed", "reload", url=redis_url)
    assert unsaid.returncode == 2 and "--all, --channel C" in unsaid.stderr
    assert mutitask("failed", "list", "--channel", "0", url=redis_url).returncode == 2
    down = mutitask("failed", "count", url=f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    assert down.returncode == 3 and "cannot reach Redis at redis://:***@" in down.stderr
    assert "s3cret" not in down.stderr and "Traceback" not in down.stderr


def test_help_has_examples() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mutitask_celery", "--help"], capture_output=True, text=True, check=True
    )
    assert "mutitask failed reload --all" in out.stdout and "exit codes" in out.stdout
