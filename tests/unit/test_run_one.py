"""How a device turns one task into an outcome (no broker needed): retries, None, save errors."""

from __future__ import annotations

import pytest

from mutitask_celery import codec
from mutitask_celery.channels import ChannelHandler, TaskFormat, register_channel
from mutitask_celery.device.tasks import run_one
from mutitask_celery.device.time_limits import Runners
from mutitask_celery.errors import ConfigurationError


def handler(fn, retries: int = 0, save=None, fmt: TaskFormat = TaskFormat.TEXT) -> ChannelHandler:  # type: ignore[no-untyped-def]
    return ChannelHandler(
        channel=1, task_function=fn, save_function=save, task_format=fmt, retries=retries, retry_backoff=0.0
    )


def test_exceptions_are_retried_then_succeed() -> None:
    calls: list[str] = []

    def flaky(task: str) -> str:
        calls.append(task)
        if len(calls) < 3:
            raise TimeoutError("slow site")
        return task.upper()

    outcome = run_one(handler(flaky, retries=2), "id1", codec.encode("a"), Runners())
    assert outcome.ok and codec.decode(outcome.result) == "A" and calls == ["a", "a", "a"]


def test_retries_run_out_into_the_dead_letter_reason() -> None:
    calls: list[str] = []

    def broken(task: str) -> str:
        calls.append(task)
        raise ValueError("always")

    outcome = run_one(handler(broken, retries=2), "id1", codec.encode("a"), Runners())
    assert not outcome.ok and outcome.reason == "ValueError: always (after 2 retries)"
    assert len(calls) == 3 and "ValueError" in outcome.traceback


def test_none_is_never_retried() -> None:
    calls: list[str] = []

    def nothing(task: str) -> None:
        calls.append(task)

    outcome = run_one(handler(nothing, retries=5), "id1", codec.encode("a"), Runners())
    assert outcome.reason == "returned None" and calls == ["a"]


def test_no_retries_by_default() -> None:
    calls: list[str] = []

    def broken(task: str) -> str:
        calls.append(task)
        raise KeyError("k")

    assert run_one(handler(broken), "id1", codec.encode("a"), Runners()).reason == "KeyError: 'k'" and calls == ["a"]


def test_falsy_results_are_results() -> None:
    for value in (0, "", [], False):
        outcome = run_one(handler(lambda task, v=value: v), "id", codec.encode("x"), Runners())
        assert outcome.ok and codec.decode(outcome.result) == value


def test_unserializable_result_is_a_failure_with_reason() -> None:
    outcome = run_one(handler(lambda task: object()), "id", codec.encode("x"), Runners())
    assert not outcome.ok and outcome.reason.startswith("unserializable result")


def test_undecodable_task_data_is_a_failure_not_a_crash() -> None:
    outcome = run_one(handler(lambda task: task), "id", "{not json", Runners())
    assert not outcome.ok and outcome.reason.startswith("undecodable task data")


@pytest.mark.parametrize("kw", [{"retries": -1}, {"retries": 1.5}, {"retry_backoff": -2}, {"retry_backoff": "1"}])
def test_bad_retry_settings_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        register_channel(1, lambda task: task, **kw)  # type: ignore[arg-type]
