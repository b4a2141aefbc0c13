"""The dead-letter filter without a store: what people type for times (durations, dates, zones),
reasons (substring or glob), devices (full, short, by number), the clauses the Lua steps judge,
and the field index's cut and ranges (a value cut where a character starts)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mutitask_celery.books.dead_filter import DeadFilter, parse_moment, resolve_moment
from mutitask_celery.books.records import INDEX_CUT, INDEXED, index_cut, index_range
from mutitask_celery.errors import ConfigurationError

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("typed", "seconds"),
    [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1w", 604800), ("1h30m", 5400), ("1.5h", 5400)],
)
def test_a_duration_counts_back_from_now(typed: str, seconds: float) -> None:
    assert parse_moment(typed) == timedelta(seconds=seconds)
    assert resolve_moment(typed, lambda: NOW) == NOW - seconds


def test_a_date_and_time_is_local_unless_it_names_its_zone() -> None:
    local = datetime(2026, 12, 4, 10, 0).timestamp()  # this machine's local time, as `failed list` shows
    assert parse_moment("2026-12-04T10:00") == local
    assert parse_moment("2026-12-04 10:00:00") == local  # as `failed list` prints it
    assert parse_moment("2026-12-04") == datetime(2026, 12, 4).timestamp()
    utc = datetime(2026, 12, 4, 10, 0, tzinfo=timezone.utc).timestamp()
    assert parse_moment("2026-12-04T10:00Z") == parse_moment("2026-12-04T10:00+00:00") == utc
    assert parse_moment("2026-12-04T12:00+02:00") == utc


def test_other_moments_a_caller_may_give() -> None:
    now_read = []

    def now() -> float:
        now_read.append(1)
        return NOW

    assert resolve_moment(1234.5, now) == 1234.5
    assert resolve_moment(datetime(2026, 12, 4, tzinfo=timezone.utc), now) == 1796342400.0
    assert not now_read  # Redis's clock is read for a duration only
    assert resolve_moment(timedelta(minutes=5), now) == NOW - 300 and now_read


@pytest.mark.parametrize(
    ("typed", "problem"),
    [
        ("yesterday", "cannot read 'yesterday' as a time"),
        ("600", "a number needs a unit"),
        ("10 minutes", "cannot read"),
        ("", "cannot read"),
        ("2026-13-01", "cannot read"),
    ],
)
def test_what_cannot_be_read_as_a_time_says_why(typed: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        parse_moment(typed)
    assert "10m" in str(caught.value) and "2026-12-04T10:00" in str(caught.value)  # and what would do


def test_a_filter_from_what_a_caller_gave() -> None:
    where = DeadFilter.of(channel=2, reason="ConnectionError*", device=2, since="10m", until=NOW, now=lambda: NOW)
    assert where == DeadFilter(2, "ConnectionError*", "device2", NOW - 600, NOW, None)
    assert DeadFilter.of(device="3").device == "device3"
    assert where.as_dict() == {
        "channel": 2,
        "reason": "ConnectionError*",
        "device": "device2",
        "since": NOW - 600,
        "until": NOW,
    }
    assert not DeadFilter().narrows and not DeadFilter(channel=1).narrows and DeadFilter(since=1.0).narrows
    assert not DeadFilter(since=1.0).by_content and DeadFilter(device="d").by_content


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"reason": ""}, "reason must be a non-empty text"),
        ({"device": ""}, "device must be a non-empty text"),
        ({"text": ""}, "text must be a non-empty text"),
        ({"channel": 0}, "channel must be a positive integer"),
        ({"since": "later"}, "since: cannot read 'later'"),
        ({"until": "5 o'clock"}, "until: cannot read"),
        ({"since": "1m", "until": "2h"}, "since is after until"),
    ],
)
def test_bad_input_is_refused_naming_the_problem(given: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        DeadFilter.of(**given, now=lambda: NOW)  # type: ignore[arg-type]


def test_a_reason_is_a_substring_or_a_glob_of_the_whole() -> None:
    sub = DeadFilter(reason="ConnectionError")
    assert sub.reason_kind == "sub" and not sub.reason_is_glob and sub.reason_prefix == ""
    assert sub.reason_matches("requests.exceptions.ConnectionError: refused")
    assert not sub.reason_matches("connectionerror: refused")  # case-sensitive
    glob = DeadFilter(reason="ConnectionError*")
    assert glob.reason_kind == "prefix" and glob.reason_prefix == "ConnectionError"
    assert glob.reason_matches("ConnectionError: refused") and not glob.reason_matches("requests.ConnectionError")
    for pattern, reason, kind in (
        ("*Error: try ? of*", "ConnectionError: try 1 of a failed", "glob"),
        ("ValueError: unlucky [0-9]*", "ValueError: unlucky 13", "glob"),
        ("ValueError: unlucky [!0-9]*", "ValueError: unlucky x", "glob"),
        ("Time*limit*", "Timeout: time limit", "glob"),
    ):
        where = DeadFilter(reason=pattern)
        assert where.reason_kind == kind and where.reason_matches(reason), pattern
    assert DeadFilter(reason="Value*unlucky").reason_prefix == "Value"
    assert not DeadFilter(reason="ValueError: unlucky ?").reason_matches("ValueError: unlucky 13")


def test_a_device_by_its_full_or_its_short_name() -> None:
    short = DeadFilter(device="device2")
    assert (
        short.device_matches("device2@host-a") and short.device_matches("device2@b") and short.device_matches("device2")
    )
    assert not short.device_matches("device20@host-a") and not short.device_matches("xdevice2@h")
    full = DeadFilter(device="device2@host-a")
    assert full.device_matches("device2@host-a") and not full.device_matches("device2@host-b")


def test_holds_for_every_clause() -> None:
    where = DeadFilter(channel=1, reason="Conn*", device="device2", since=10.0, until=20.0)
    assert where.holds_for(1, "device2@h", "ConnectionError: x", 10.0)
    assert where.holds_for(1, "device2@h", "ConnectionError: x", 20.0)  # both ends in the window
    assert not where.holds_for(2, "device2@h", "ConnectionError: x", 15.0)
    assert not where.holds_for(1, "device3@h", "ConnectionError: x", 15.0)
    assert not where.holds_for(1, "device2@h", "ValueError: x", 15.0)
    assert not where.holds_for(1, "device2@h", "ConnectionError: x", 20.5)
    assert DeadFilter(text="example.com").shows("GET https://example.com/a") and not DeadFilter(text="x").shows("y")


def test_the_clauses_the_acting_step_judges() -> None:
    assert DeadFilter().lua_clauses() == {"since": "", "up_to": "", "device": "", "reason_kind": "", "reason": ""}
    assert DeadFilter(reason="Conn*", device="d1", since=1.5, until=2.25).lua_clauses() == {
        "since": "1.5",
        "up_to": "2.25",
        "device": "d1",
        "reason_kind": "prefix",
        "reason": "Conn",
    }
    assert DeadFilter(reason="refused").lua_clauses()["reason_kind"] == "sub"
    assert DeadFilter(reason="refused").judged_by_redis and DeadFilter(reason="Conn*").judged_by_redis
    glob = DeadFilter(reason="*refused*")
    assert not glob.judged_by_redis and glob.lua_clauses()["reason_kind"] == ""  # judged before, records stamped
    assert not DeadFilter(text="x").judged_by_redis
    assert DeadFilter(until=5.0).until_at_most(3.0).until == 3.0 and DeadFilter().until_at_most(3.0).until == 3.0
    assert DeadFilter(until=2.0).until_at_most(3.0).until == 2.0


def test_the_field_index_keeps_a_values_start_cut_where_a_character_starts() -> None:
    assert INDEXED == ("reason", "device")
    assert index_cut(b"short") == b"short"
    ascii_long = b"x" * 100
    assert index_cut(ascii_long) == b"x" * INDEX_CUT
    accented = ("x" * (INDEX_CUT - 1) + "é").encode()  # 'é' is two bytes: its second would be cut off
    assert index_cut(accented) == b"x" * (INDEX_CUT - 1)
    assert index_cut(accented).decode()  # never half a character


def test_the_field_index_ranges() -> None:
    assert index_range("device", "device2", whole=True) == (b"[device\0device2\0", b"(device\0device2\0\xff")
    assert index_range("reason", "Conn", whole=False) == (b"[reason\0Conn", b"(reason\0Conn\xff")
    long_value = "d" * 100  # cut in the index: every value that starts alike is a candidate
    assert index_range("device", long_value, whole=True) == (
        b"[device\0" + b"d" * 64,
        b"(device\0" + b"d" * 64 + b"\xff",
    )
