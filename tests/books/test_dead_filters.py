"""Filtered lists, counts, reloads and deletes of the dead-letter store against a real
redis-server, records written the way devices write them: each filter names exactly the records
whose fields it holds for (judged in Python for a list, by the Lua step for a move, and the two
agree); the field index holds exactly the records the store holds, through every step that
writes or removes one; a filtered move acts on what matched when it began (a task failing again
meanwhile is not met twice; a record written again after it was judged is left alone); the
candidates read are the matches, where an index allows; the task's text is found by ``find``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis

import mutitask_celery as mt
from mutitask_celery import api, codec, keys, runtime
from mutitask_celery.books import dead_search, messages
from mutitask_celery.books.dead_filter import DeadFilter
from mutitask_celery.books.ledger import Outcome
from mutitask_celery.books.records import INDEXED, FailedTask, index_cut
from mutitask_celery.connection import raw_twin
from mutitask_celery.errors import ConfigurationError

# (channel, task, reason, device) of the store most tests start from: two kinds of failure on
# two devices, a second host of device2, a reason with Lua's magic characters, and the server.
ROWS = [
    (1, "GET https://example.com/1", "ConnectionError: site example.com down", "device1@a"),
    (1, "GET https://example.com/2", "ValueError: bad page 2", "device1@a"),
    (1, "GET https://other.org/3", "ConnectionError: site other.org down", "device2@a"),
    (2, "GET https://example.com/4", "ConnectionError: site example.com down", "device2@b"),
    (2, "GET https://other.org/5", "KeyError: 'a.b%(c)'", "device2@a"),
    (2, "GET https://other.org/6", "returned None", "device20@a"),
    (1, "GET https://example.com/7", "requests.ConnectionError: reset", "device1@a"),
]

FILTERS: list[dict[str, Any]] = [
    {"reason": "ConnectionError*"},  # a glob 'text*': the field index, judged by the Lua step
    {"reason": "ConnectionError"},  # a substring: anywhere in the reason
    {"reason": "*site * down"},  # a glob beyond 'text*': judged in Python, each record stamped
    {"reason": ".b%("},  # Lua's pattern characters, found as plain text
    {"device": "device2"},  # a short name: every host's device2, not device20
    {"device": "device2@a"},
    {"device": 1},
    {"channel": 1, "reason": "ConnectionError*"},
    {"device": "device2", "reason": "ConnectionError*"},
    {"text": "example.com"},
    {"text": "example.com", "device": "device1"},
]


def fill(rows: list[tuple[int, object, str, str]] = ROWS) -> list[str]:
    """Publish each task, take it off the queue and record it as failed, one after another."""
    ids = []
    for channel, task, reason, device in rows:
        task_id = messages.new_task_id()
        runtime.ledger().publish(channel, [(task_id, codec.encode(task))])
        runtime.ledger().client.delete(keys.queue(channel))
        fail(channel, task_id, reason, device)
        ids.append(task_id)
    return ids


def fail(channel: int, task_id: str, reason: str, device: str) -> None:
    runtime.ledger().finish(channel, device, [Outcome(task_id, ok=False, reason=reason)])


def expected(where: DeadFilter, records: list[FailedTask]) -> list[str]:
    """The ids of the records ``where`` names, judged field by field here."""
    return [
        r.id
        for r in records
        if where.holds_for(r.channel, r.device, r.reason, r.last_failed) and where.shows(codec.to_text(r.data))
    ]


def raw(r: redis.Redis) -> redis.Redis:
    """A client of the same server that returns bytes (the field index's entries are bytes)."""
    return raw_twin(r)


def field_index(r: redis.Redis) -> set[bytes]:
    return set(raw(r).zrange(keys.DEFAULT.dead_by_field, 0, -1))


def entries_of(records: list[FailedTask]) -> set[bytes]:
    """The field index's entries the records should have (lua/dead_index.lua's layout)."""
    return {
        f"{name}\0".encode() + index_cut(getattr(r, name).encode()) + f"\0{r.channel}\0{r.id}".encode()
        for r in records
        for name in INDEXED
    }


def test_the_field_index_holds_every_record_and_only_them(r: redis.Redis) -> None:
    ids = fill()
    long_reason = "RuntimeError: " + "é" * 60  # cut in the index where a character starts
    fill([(3, "t", long_reason, "device9@h")])
    runtime.store().add_unpublishable(2, "not JSON-able", "TypeError: cannot travel")  # written by the server
    assert field_index(r) == entries_of(mt.failed(limit=None))
    assert mt.reload_failed(ids=ids[:2]) == 2
    fail(1, ids[0], "TimeoutError: again", "device3@c")  # written again: its old entries replaced
    assert mt.delete_failed(ids=[ids[2]]) == 1
    assert mt.reload_failed(2) == 4  # three rows and the unpublishable item
    (lost,) = fill([(4, "x", "worker lost: the device died while running it, 3 time(s)", "device1@a")])
    runtime.ledger().finish(4, "device1@a", [Outcome(lost, ok=True, result=codec.encode("late"))])  # revived
    with pytest.raises(KeyError):
        mt.get_failed(lost)
    left = mt.failed(limit=None)
    assert field_index(r) == entries_of(left) and len(field_index(r)) == len(INDEXED) * mt.failed_count()
    assert mt.delete_failed() == len(left) and field_index(r) == set()


@pytest.mark.parametrize("given", FILTERS, ids=[str(f) for f in FILTERS])
def test_a_filter_lists_and_counts_exactly_what_it_names(given: dict[str, Any], r: redis.Redis) -> None:
    fill()
    records = mt.failed(limit=None)
    wanted = expected(api.dead_filter(**given), records)
    assert wanted, "each filter here names some records"
    assert [f.id for f in mt.failed(limit=None, **given)] == wanted  # oldest failure first
    assert mt.failed_count(**given) == len(wanted)
    assert mt.reload_failed(**given, dry_run=True) == mt.delete_failed(**given, dry_run=True) == len(wanted)
    assert mt.failed_count() == len(ROWS)  # a dry run moves nothing


@pytest.mark.parametrize("action", ["reload", "delete"])
@pytest.mark.parametrize("given", FILTERS, ids=[str(f) for f in FILTERS])
def test_a_filtered_reload_or_delete_moves_exactly_those(action: str, given: dict[str, Any], r: redis.Redis) -> None:
    fill()
    records = mt.failed(limit=None)
    wanted = set(expected(api.dead_filter(**given), records))
    act = mt.reload_failed if action == "reload" else mt.delete_failed
    assert act(**given) == len(wanted)
    assert {f.id for f in mt.failed(limit=None)} == {f.id for f in records} - wanted  # the others untouched
    if action == "reload":
        for ch in (1, 2):
            back = set(r.zrange(keys.backlog(ch), 0, -1)) | set(r.hkeys(keys.pending(ch)))
            assert back == {f.id for f in records if f.id in wanted and f.channel == ch}
    assert field_index(r) == entries_of(mt.failed(limit=None))
    assert act(**given) == 0  # nothing named is left


def test_the_window_is_the_last_failure_time_both_ends_in(r: redis.Redis) -> None:
    ids = fill()
    records = mt.failed(limit=None)
    since, until = records[2].last_failed, records[4].last_failed
    assert [f.id for f in mt.failed(since=since, until=until)] == ids[2:5]
    assert mt.failed_count(since=since) == len(ROWS) - 2 and mt.failed_count(until=until, channel=2) == 2
    assert mt.failed_count(since="1h") == len(ROWS) and mt.failed_count(until="1h") == 0
    assert mt.delete_failed(until=until, device="device2") == 3  # device2 on either host, up to ids[4]
    assert {f.id for f in mt.failed(limit=None)} == set(ids) - {ids[2], ids[3], ids[4]}


def test_bad_input_moves_nothing(r: redis.Redis) -> None:
    fill()
    for bad in ({"reason": ""}, {"since": "yesterday"}, {"device": ""}, {"since": "1m", "until": "1h"}):
        for act in (mt.reload_failed, mt.delete_failed, mt.failed, mt.failed_count):
            with pytest.raises(ConfigurationError):
                act(**bad)
    assert mt.failed_count() == len(ROWS)


def hook_steps(store: Any, name: str, after: Callable[[list[str]], None]) -> list[int]:
    """Call ``after`` with the ids each call of the store's step ``name`` was given, once it
    returned; returns the list of how many each call was given."""
    step = getattr(store, name)
    sizes: list[int] = []

    def hooked(**given: Any) -> Any:
        reply = step(**given)
        n = len(given["records"])
        sizes.append(n)
        after(list(given["ids_then_stamps"][:n]))
        return reply

    store.__dict__[name] = hooked
    return sizes


@pytest.mark.parametrize("reason", ["ConnectionError*", "ConnectionError", "*Error: site*"])
def test_what_fails_again_during_a_filtered_reload_is_not_met_twice(
    reason: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dead_search, "PAGE", 3)
    ids = fill([(1, f"t{n}", f"ConnectionError: site {n} down", "device1@a") for n in range(10)])
    fill([(1, "other", "ValueError: no", "device1@a")])
    store = runtime.store()

    def fail_again(chosen: list[str]) -> None:  # each reloaded task fails at once, as it did
        for task_id in chosen:
            if r.hexists(keys.pending(1), task_id):
                r.zrem(keys.backlog(1), task_id)
                fail(1, task_id, "ConnectionError: site still down", "device1@a")

    hook_steps(store, "_reload", fail_again)
    assert store.reload(where=DeadFilter(reason=reason)) == 10
    assert mt.failed_count(reason=reason) == 10 and all(mt.get_failed(i).failures == 2 for i in ids)


@pytest.mark.parametrize("reason", ["ConnectionError*", "*site*"])
def test_a_record_written_again_after_it_was_judged_is_left_alone(
    reason: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = fill([(1, f"t{n}", f"ConnectionError: site {n} down", "device1@a") for n in range(4)])
    store = runtime.store()
    step = store._reload

    def meanwhile(**given: Any) -> Any:  # another operator reloads ids[0]; it fails again, otherwise
        store.__dict__["_reload"] = step
        assert mt.reload_failed(ids=[ids[0]]) == 1
        fail(1, ids[0], "ValueError: something else now", "device1@a")
        return step(**given)

    store.__dict__["_reload"] = meanwhile
    assert store.reload(where=DeadFilter(reason=reason)) == 3
    assert [f.id for f in mt.failed(limit=None)] == [ids[0]] and mt.get_failed(ids[0]).reason.startswith("ValueError")


def test_the_candidates_read_are_the_matches_where_an_index_allows(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill([(1, f"n{n}", "returned None", "device1@a") for n in range(300)])
    matching = fill([(1, f"c{n}", f"ConnectionError: site {n} down", "device2@b") for n in range(7)])
    fill([(1, f"m{n}", "returned None", "device1@a") for n in range(300)])
    judged: list[int] = []
    judge = dead_search.Judge.__call__
    monkeypatch.setattr(dead_search.Judge, "__call__", lambda self, ids: judged.append(len(ids)) or judge(self, ids))
    for given in ({"reason": "ConnectionError*"}, {"device": "device2"}, {"device": "device2@b", "reason": "Conn*"}):
        judged.clear()
        assert mt.failed_count(**given) == 7 and sum(judged) == 7, given  # not the 607 records
    store = runtime.store()
    moved = hook_steps(store, "_reload", lambda chosen: None)
    assert store.reload(where=DeadFilter(reason="ConnectionError*")) == 7 and sum(moved) == 7
    assert set(r.hkeys(keys.pending(1))) == set(matching)  # back in the books
    last = mt.failed(limit=None)[-5]
    judged.clear()
    assert mt.failed_count(since=last.last_failed, reason="None") == 5 and sum(judged) == 5  # the window's five


def test_records_written_without_the_field_index_are_filed_once(
    r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ids = fill()
    r.delete(keys.DEFAULT.dead_by_field)  # as a version before it left the store
    raw(r).zadd(keys.DEFAULT.dead_by_field, {b"device\0device2@a\0" + b"1\0gone-record": 0})  # its record is gone
    r.zadd(keys.dead_index(), {"gone-too": 0.5})  # a failure-time entry without its record
    assert mt.failed_count(device="device2") == 3
    assert "filing the dead-letter records" in caplog.text
    assert field_index(r) == entries_of(mt.failed(limit=None)) and r.zscore(keys.dead_index(), "gone-too") is None
    caplog.clear()
    assert mt.reload_failed(reason="ConnectionError*") == 3 and "filing" not in caplog.text  # once
    assert {f.id for f in mt.failed(limit=None)} == {ids[1], ids[4], ids[5], ids[6]}


def test_find_by_the_tasks_text_with_an_offset_or_a_cursor(r: redis.Redis) -> None:
    ids = fill()
    native = fill([(3, (1, "two"), "returned None", "device1@a")])
    assert [f.id for f in mt.find_failed("(1, 'two')").records] == native  # its text as `failed show` prints it
    assert [f.id for f in mt.failed(text="example.com", limit=None)] == [ids[0], ids[1], ids[3], ids[6]]
    first = mt.find_failed("example.com", limit=3)
    assert [f.id for f in first.records] == [ids[0], ids[1], ids[3]] and first.cursor is not None
    rest = mt.find_failed("example.com", limit=3, cursor=first.cursor)
    assert [f.id for f in rest.records] == [ids[6]] and rest.cursor is None
    assert [f.id for f in mt.find_failed("example.com", limit=2, offset=2).records] == [ids[3], ids[6]]
    assert [f.id for f in mt.find_failed("example.com", device="device2", limit=1).records] == [ids[3]]
    assert mt.find_failed("nowhere").records == [] and mt.find_failed("nowhere").cursor is None
    with pytest.raises(ConfigurationError, match="not a cursor"):
        mt.find_failed("example.com", cursor="bogus")
