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


def fail_tasks(channel: int, values: list[object], reason: str, device: str) -> list[str]:
    items = [(messages.new_task_id(), codec.encode(v)) for v in values]
    runtime.ledger().publish(channel, items)
    runtime.ledger().finish(channel, device, [Outcome(i, ok=False, reason=reason) for i, _ in items])
    return [i for i, _ in items]


def test_filters_on_list_count_reload_and_delete(r: redis.Redis, redis_url: str) -> None:
    down = fail_tasks(1, ["a", "b", "c"], "ConnectionError: site down", "device2@h")
    bugs = fail_tasks(1, ["d"], "ValueError: a real bug", "device1@h")
    other = fail_tasks(2, ["e"], "ConnectionError: site down", "device1@h")
    listed = json.loads(mutitask("failed", "list", "--reason", "ConnectionError*", "--json", url=redis_url).stdout)
    assert [x["id"] for x in listed] == down + other
    counted = json.loads(mutitask("failed", "count", "--device", "device1", "--json", url=redis_url).stdout)
    assert counted == {"total": 2, "channels": {"1": 1, "2": 1}, "dropped": 0}
    dry = mutitask("failed", "reload", "--reason", "ConnectionError*", "--channel", "1", "--dry-run", url=redis_url)
    assert dry.returncode == 0 and dry.stdout.strip() == "would reload 3 failed task(s)"
    assert mt.failed_count() == 5  # a dry run moves nothing
    done = mutitask("failed", "reload", "--reason", "ConnectionError*", "--channel", "1", "--json", url=redis_url)
    assert json.loads(done.stdout) == {"reloaded": 3} and runtime.ledger().outstanding(1) == 3
    assert {f.id for f in mt.failed(limit=None)} == set(bugs + other)
    gone = mutitask("failed", "delete", "--device", "device1@h", "--since", "1h", "--json", url=redis_url)
    assert json.loads(gone.stdout) == {"deleted": 2} and mt.failed_count() == 0


def test_bad_filters_exit_2_naming_the_problem_and_move_nothing(r: redis.Redis, redis_url: str) -> None:
    fail_tasks(1, ["a"], "ConnectionError: down", "device1@h")
    for args, problem in (
        (["--since", "yesterday"], "argument --since: cannot read 'yesterday' as a time"),
        (["--until", "600"], "a number needs a unit"),
        (["--reason", ""], "argument --reason: must not be empty"),
        (["--device", ""], "argument --device: must not be empty"),
        (["--since", "1m", "--until", "1h"], "since is after until"),
    ):
        for action in ("reload", "delete"):
            done = mutitask("failed", action, *args, url=redis_url)
            assert done.returncode == 2 and problem in done.stderr, (args, done.stderr)
            assert "Traceback" not in done.stderr
    assert mt.failed_count() == 1
    unsaid = mutitask("failed", "delete", url=redis_url)
    assert unsaid.returncode == 2 and "a filter (--reason, --device, --since, --until)" in unsaid.stderr


def test_find_by_text_pages_with_a_cursor(r: redis.Redis, redis_url: str) -> None:
    ids = fail_tasks(1, [f"GET https://example.com/{n}" for n in range(5)], "ConnectionError: down", "device1@h")
    fail_tasks(1, ["GET https://other.org/"], "ConnectionError: down", "device1@h")
    table = mutitask("failed", "find", "example.com", "--limit", "3", url=redis_url)
    assert table.returncode == 0 and table.stdout.count("example.com") == 3 and "other.org" not in table.stdout
    cursor = table.stdout.strip().splitlines()[-1].removeprefix("more: --cursor ")
    rest = json.loads(mutitask("failed", "find", "example.com", "--cursor", cursor, "--json", url=redis_url).stdout)
    assert [x["id"] for x in rest["records"]] == ids[3:] and rest["cursor"] is None
    skipped = json.loads(mutitask("failed", "find", "example.com", "--offset", "4", "--json", url=redis_url).stdout)
    assert [x["id"] for x in skipped["records"]] == ids[4:]
    assert "no failed task's text holds that" in mutitask("failed", "find", "nowhere", url=redis_url).stdout
    assert mutitask("failed", "find", "x", "--cursor", "bogus", url=redis_url).returncode == 2


def test_the_filters_help_says_substring_or_glob() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mutitask_celery", "failed", "reload", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    words = " ".join(out.stdout.split()).replace("- ", "-")  # argparse breaks lines at hyphens
    assert "a plain, case-sensitive substring" in words and "is a glob the whole reason must match" in words
    assert "--dry-run" in words and "10m" in words
