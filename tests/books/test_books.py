"""The books and the dead-letter store against a real redis-server, without workers:
outcomes are recorded the way a device records them."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import redis
from helpers.settings import fresh_settings

import mutitask_celery as mt
from mutitask_celery import codec, keys, runtime
from mutitask_celery.books import messages, records, scripts
from mutitask_celery.books.ledger import Outcome
from mutitask_celery.books.records import FailedTask, decode_record, table_rows
from mutitask_celery.serving.console import Console
from mutitask_celery.serving.producer import Producer


def publish(channel: int, values: list[object]) -> list[str]:
    items = [(messages.new_task_id(), codec.encode(v)) for v in values]
    runtime.ledger().publish(channel, items)
    return [i for i, _ in items]


def queued(r: redis.Redis, channel: int) -> list[tuple[str, object]]:
    """(task id, task value) of every message waiting on the channel's queue, oldest first."""
    out = []
    for raw in reversed(r.lrange(keys.queue(channel), 0, -1)):
        envelope = json.loads(raw)
        assert envelope["headers"]["task"] == "mutitask.run"
        args, kwargs, _embed = messages.body_of(envelope)
        assert args[0] == channel and kwargs == {}
        out += [(item[0], codec.decode(messages.item_text(item))) for item in args[1]]
    return out


def fail(channel: int, task_id: str, reason: str = "returned None", device: str = "device1@h") -> None:
    runtime.ledger().finish(channel, device, [Outcome(task_id, ok=False, reason=reason)])


def test_publish_enters_books_and_queue(r: redis.Redis) -> None:
    ids = publish(1, ["a", (1, 2), np.arange(3)])
    assert runtime.ledger().outstanding(1) == 3
    got = queued(r, 1)
    assert [i for i, _ in got] == ids
    assert got[0][1] == "a" and got[1][1] == (1, 2) and np.array_equal(got[2][1], np.arange(3))
    assert runtime.ledger().stats(1).published == 3


def test_a_result_is_saved_once_even_when_finished_twice(r: redis.Redis) -> None:
    (task_id,) = publish(1, ["x"])
    outcome = Outcome(task_id, ok=True, result=codec.encode({"n": 1}))
    assert runtime.ledger().finish(1, "device1@h", [outcome])[:3] == (1, 0, 0)
    assert runtime.ledger().finish(1, "device2@h", [outcome])[:3] == (0, 0, 1)
    assert mt.results(1) == [{"n": 1}] and mt.results_count(1) == 1
    stats = runtime.ledger().stats(1)
    assert (stats.succeeded, stats.duplicates) == (1, 1)
    assert runtime.ledger().outstanding(1) == 0


def test_a_finish_says_which_of_its_outcomes_ran_twice(r: redis.Redis) -> None:
    """A device's trace tells each task's outcome as the books took it (see tracing)."""
    first, second, third = publish(1, ["a", "b", "c"])
    runtime.ledger().finish(1, "device2@h", [Outcome(second, ok=False, reason="returned None")])
    outcomes = [Outcome(t, ok=True, result='"x"') for t in (first, second)]
    outcomes.append(Outcome(third, ok=True, skipped=True))
    finished = runtime.ledger().finish(1, "device1@h", outcomes)
    assert finished[:3] == (1, 0, 2) and finished.run_twice == (1, 2)
    assert runtime.ledger().outstanding(1) == 1  # the skipped one: another run's to finish


def test_each_outcome_in_a_message_is_its_own(r: redis.Redis) -> None:
    a, b, c = publish(2, [1, 2, 3])
    runtime.ledger().finish(
        2,
        "d@h",
        [
            Outcome(a, ok=True, result="2"),
            Outcome(b, ok=False, reason="ValueError: no"),
            Outcome(c, ok=True, result="6"),
        ],
    )
    assert mt.results(2) == [2, 6]
    assert [f.id for f in mt.failed(2)] == [b]


def test_failure_record_keeps_why_where_when(r: redis.Redis) -> None:
    image = np.arange(6, dtype=np.uint8).reshape(2, 3)
    (task_id,) = publish(1, [image])
    runtime.ledger().finish(
        1, "device3@host", [Outcome(task_id, ok=False, reason="ValueError: bad", traceback="Traceback ...")]
    )
    (record,) = mt.failed(1)
    assert record.id == task_id and record.channel == 1
    assert np.array_equal(record.data, image) and record.data.dtype == np.uint8
    assert record.reason == "ValueError: bad" and record.traceback == "Traceback ..."
    assert record.device == "device3@host"
    assert record.failures == 1 and record.first_failed == record.last_failed > 0
    assert mt.get_failed(task_id).as_dict() == record.as_dict()
    assert mt.failed_count(1) == 1 and mt.failed_count() == 1 and mt.failed_count(2) == 0


def test_a_record_is_stored_with_the_fields_its_type_declares(r: redis.Redis) -> None:
    (task_id,) = publish(1, ["x"])
    fail(1, task_id)
    names = [f.name for f in FailedTask.FIELDS]
    assert names == [f.name for f in dataclasses.fields(FailedTask)] == list(mt.get_failed(task_id).as_dict())
    assert set(r.hkeys(keys.dead_record(task_id))) == {"v", *names}  # and "claim" when a device died saving


def test_the_writer_stores_what_the_record_declares(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Lua writer takes its field list from FailedTask: a field declared there with no value
    in the writer stops the write with an error naming it, and the task stays in the books."""
    host = records.Field(name="host", kind=records.Kind.WORD, absent="")
    monkeypatch.setattr(FailedTask, "FIELDS", (*FailedTask.FIELDS, host))
    scripts.source.cache_clear()
    try:
        fresh_settings()  # a ledger that loads the scripts again
        (task_id,) = publish(1, ["x"])
        with pytest.raises(redis.ResponseError, match="no value for the record field host"):
            fail(1, task_id)
        assert runtime.ledger().outstanding(1) == 1 and not r.exists(keys.dead_record(task_id))
    finally:
        scripts.source.cache_clear()
        monkeypatch.undo()
        fresh_settings()


RECORD = {
    "v": "1",
    "id": "t1",
    "channel": "3",
    "data": codec.encode({"n": [1, 2]}),
    "reason": "ValueError: no",
    "traceback": "Traceback ...",
    "device": "device1@h",
    "first_failed": "1700000000.5",
    "last_failed": "1700000100.25",
    "failures": "2",
    "result": "",
    "claim": "",
}


def test_a_record_reads_from_its_hash_field_by_field() -> None:
    record = decode_record(RECORD)
    assert record == FailedTask(
        "t1", 3, {"n": [1, 2]}, "ValueError: no", "Traceback ...", "device1@h", 1700000000.5, 1700000100.25, 2
    )
    assert record.as_dict()["data"] == "{'n': [1, 2]}" and record.as_dict()["result"] is None
    # As 0.2.0 wrote one: an array as nested lists, fields added since absent
    old = decode_record(
        {"v": "1", "id": "t2", "channel": "1", "data": '{"__mt__":"ndarray","dtype":"<i8","shape":[2],"v":[1,2]}'}
    )
    assert old is not None and old.data.tolist() == [1, 2]
    assert (old.reason, old.failures, old.first_failed, old.result) == ("", 1, 0.0, None)
    for required in ("id", "channel", "data"):
        assert decode_record({k: v for k, v in RECORD.items() if k != required}) is None


def test_the_cli_table_shows_the_fields_with_a_column() -> None:
    long = decode_record({**RECORD, "data": codec.encode("t" * 50), "reason": "r" * 50})
    assert long is not None
    header, row = table_rows([long])
    assert header == ("ID", "CH", "FAILS", "LAST FAILED", "DEVICE", "REASON", "TASK")
    assert row[:3] == ("t1", "3", "2") and row[4] == "device1@h"
    assert row[5] == "r" * 40 and row[6] == "t" * 40 + "..."  # a cut task says so


def test_reload_moves_each_record_to_the_queue_exactly_once(r: redis.Redis) -> None:
    ids = publish(1, list(range(5)))
    r.delete(keys.queue(1))  # pretend a device took the messages
    for task_id in ids:
        fail(1, task_id)
    assert mt.failed_count(1) == 5 and runtime.ledger().outstanding(1) == 0
    assert mt.reload_failed(1) == 5
    assert mt.failed_count(1) == 0
    assert sorted(v for _, v in queued(r, 1)) == [0, 1, 2, 3, 4]
    assert sorted(i for i, _ in queued(r, 1)) == sorted(ids)
    assert runtime.ledger().outstanding(1) == 5
    assert mt.reload_failed(1) == 0  # nothing left: nothing doubled


def test_a_reloaded_task_that_fails_again_is_the_same_record(r: redis.Redis) -> None:
    (task_id,) = publish(1, ["t"])
    fail(1, task_id, "returned None")
    first = mt.get_failed(task_id)
    mt.reload_failed(ids=[task_id])
    fail(1, task_id, "ValueError: again", device="device2@h")
    (record,) = mt.failed(1)
    assert record.id == task_id and record.failures == 2
    assert record.first_failed == first.first_failed and record.last_failed >= first.last_failed
    assert record.reason == "ValueError: again" and record.device == "device2@h"


def test_reload_and_delete_by_channel_and_ids(r: redis.Redis) -> None:
    ids1 = publish(1, ["a", "b"])
    ids12 = publish(12, ["c", "d"])
    for task_id in ids1:
        fail(1, task_id)
    for task_id in ids12:
        fail(12, task_id)
    assert mt.failed_count() == 4 and mt.failed_count(12) == 2
    assert mt.reload_failed(12, ids=[ids1[0]]) == 0  # id of another channel: untouched
    assert mt.reload_failed(ids=[ids12[1], "no-such-id"]) == 1
    assert [v for _, v in queued(r, 12)][-1] == "d"
    assert mt.delete_failed(1, ids=[ids1[0]]) == 1
    assert mt.delete_failed(12) == 1
    assert [f.id for f in mt.failed()] == [ids1[1]]
    assert mt.delete_failed() == 1 and mt.failed_count() == 0
    with pytest.raises(KeyError):
        mt.get_failed(ids1[1])


def test_failed_is_ordered_and_paged(r: redis.Redis) -> None:
    ids = publish(3, list(range(7)))
    for task_id in ids:
        fail(3, task_id)
    assert [f.id for f in mt.failed(3)] == ids
    assert [f.id for f in mt.failed(3, limit=3, offset=2)] == ids[2:5]


def test_results_count_and_clear(r: redis.Redis) -> None:
    ids = publish(4, [1, 2])
    runtime.ledger().finish(4, "d@h", [Outcome(i, ok=True, result=codec.encode(n)) for n, i in enumerate(ids)])
    assert mt.results_count(4) == 2
    assert mt.clear_results(4) == 2 and mt.results(4) == []


def test_unreadable_records_are_skipped_with_a_warning(r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    (good,) = publish(1, ["ok"])
    fail(1, good)
    for bad, fields in [
        ("future", {"v": "99", "id": "future", "channel": "1", "data": '"x"'}),
        ("broken", {"v": "1", "id": "broken", "channel": "one", "data": "{"}),
    ]:
        r.hset(keys.dead_record(bad), mapping=fields)
        r.zadd(keys.dead_index(1), {bad: 1.0})
    assert [f.id for f in mt.failed(1)] == [good]
    assert "newer version" in caplog.text and "unreadable" in caplog.text


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(
        Producer(runtime.ledger(), runtime.recovery(), runtime.store(), 50), runtime.store(), runtime.devices(), out
    ), out


def test_console_fail_channel_commands(r: redis.Redis) -> None:
    ids = publish(10, ["a", "b", "c"])
    r.delete(keys.queue(10))
    for task_id in ids:
        fail(10, task_id)
    con, out = console()
    con.execute("detect_fail_task_channel 10")
    assert "channel 10: 3 failed task(s)" in out.getvalue()
    con.execute("reload_one_fail_channel_one_task 10 1")  # "b", counted from 0
    assert [v for _, v in queued(r, 10)] == ["b"]
    con.execute("del_one_task_by_fail_channel 10 0")  # "a"
    assert [f.data for f in mt.failed(10)] == ["c"]
    con.execute("del_one_task_by_fail_channel 10 5")
    assert "no failed task number 5" in out.getvalue()
    con.execute("reload_one_fail_channel_all_task 10")
    con.execute("reload_all_fail_channel")
    assert sorted(v for _, v in queued(r, 10)) == ["b", "c"] and mt.failed_count() == 0


@pytest.mark.parametrize(
    "line, message",
    [
        ("bogus", "unknown command 'bogus'"),
        ("detect_fail_task_channel", "usage: detect_fail_task_channel C"),
        ("detect_fail_task_channel x", "C must be a non-negative integer"),
        ("reset_task_max 0", "N must be at least 1"),
        ("reload_one_fail_channel_one_task 1 -1", "I must be a non-negative integer"),
    ],
)
def test_console_refuses_bad_lines_with_a_message(line: str, message: str, r: redis.Redis) -> None:
    con, out = console()
    assert con.execute(line) is True
    assert message in out.getvalue()


def test_console_controls_the_producer(r: redis.Redis) -> None:
    con, out = console()
    con.execute("reset_max_task 7")
    assert con.producer.channel_size == 7
    con.execute("pause_allot")
    assert con.producer.paused
    con.execute("start_allot")
    assert not con.producer.paused
    con.execute("help")
    assert "reload_all_fail_channel" in out.getvalue()
    assert con.execute("quit") is False


def test_retention_cap_drops_the_oldest_and_counts(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("MUTITASK_DEAD_LETTER_MAX", "3")
    fresh_settings()
    ids = publish(1, list(range(5)))
    for task_id in ids:
        fail(1, task_id)
        runtime.store().prune()
    assert [f.id for f in mt.failed()] == ids[2:]
    assert mt.failed_count(1) == 3 and mt.failed_dropped() == 2 and mt.failed_dropped(1) == 2
    assert r.exists(keys.dead_record(ids[0])) == 0


def test_retention_age_drops_old_records(r: redis.Redis) -> None:
    from mutitask_celery.books.dead_letters import RedisDeadLetterStore

    old, new = publish(2, ["old", "new"])
    fail(2, old)
    fail(2, new)
    for key in (keys.dead_index(), keys.dead_index(2)):
        r.zadd(key, {old: 1000.0})  # failed long ago
    store = RedisDeadLetterStore(r, max_age=3600)
    assert store.prune() == 1
    assert [f.id for f in store.failed()] == [new] and store.dropped(2) == 1


def test_no_retention_by_default(r: redis.Redis) -> None:
    ids = publish(1, list(range(4)))
    for task_id in ids:
        fail(1, task_id)
    assert runtime.store().prune() == 0 and mt.failed_count() == 4


def test_reload_leaves_records_of_a_newer_version_alone(r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    (good,) = publish(1, ["ok"])
    fail(1, good)
    r.hset(keys.dead_record("future"), mapping={"v": "99", "id": "future", "channel": "1", "data": '"x"'})
    r.zadd(keys.dead_index(), {"future": 1.0})
    r.zadd(keys.dead_index(1), {"future": 1.0})
    r.zadd(keys.dead_index(), {"orphan": 0.5})  # index entry without a record
    assert mt.reload_failed() == 1
    assert r.exists(keys.dead_record("future")) == 1 and "newer version" in caplog.text
    assert r.zscore(keys.dead_index(), "orphan") is None
    assert [i for i, _ in queued(r, 1)][-1] == good


@pytest.mark.parametrize("chosen", ["channel", "all"])
def test_a_reload_pages_past_what_it_leaves_and_ends_at_what_was_there(
    chosen: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mutitask_celery.books import dead_letters

    monkeypatch.setattr(dead_letters, "RELOAD_PAGE", 3)
    ids = publish(1, list(range(10)))
    r.delete(keys.queue(1))
    for task_id in ids:
        fail(1, task_id)
    for n in range(4):  # at the head of the index, left alone by each step: stepped over
        r.hset(keys.dead_record(f"future{n}"), mapping={"v": "99", "id": f"future{n}", "channel": "1", "data": "0"})
        r.zadd(keys.dead_index(), {f"future{n}": n})
        r.zadd(keys.dead_index(1), {f"future{n}": n})
    store = runtime.store()
    read = store.client.zrangebyscore
    again = iter(ids)

    def failing_again(*args: object, **kwargs: object) -> object:
        page = read(*args, **kwargs)  # type: ignore[arg-type]
        if (task_id := next(again, None)) is not None and r.hexists(keys.pending(1), task_id):
            fail(1, task_id)  # a reloaded task fails again at once: not met again by this reload
        return page

    monkeypatch.setattr(store.client, "zrangebyscore", failing_again)
    assert store.reload(1 if chosen == "channel" else None) == 10
    assert r.zcard(keys.dead_index(1)) == 4 + sum(1 for i in ids if r.exists(keys.dead_record(i)))
    assert all(r.exists(keys.dead_record(f"future{n}")) for n in range(4))


def test_retention_settings_are_validated() -> None:
    import types

    from mutitask_celery import settings
    from mutitask_celery.errors import ConfigurationError

    assert (
        settings.load_settings(
            environ={"MUTITASK_DEAD_LETTER_MAX": "none"}, config=types.SimpleNamespace()
        ).dead_letter_max
        is None
    )
    conf = settings.load_settings(environ={}, config=types.SimpleNamespace(mutitask_dead_letter_max_age=86400))
    assert conf.dead_letter_max_age == 86400.0
    with pytest.raises(ConfigurationError, match="MUTITASK_DEAD_LETTER_MAX"):
        settings.load_settings(environ={"MUTITASK_DEAD_LETTER_MAX": "-5"}, config=types.SimpleNamespace())
