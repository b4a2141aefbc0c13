"""The legacy surface: imports, arguments, and clear errors before anything is published."""

from __future__ import annotations

import importlib
import io
from pathlib import Path

import pytest
import redis

import mutitask_celery
from mutitask_celery.errors import ConfigurationError, FunctionError, InvalidTasksError, MutitaskError
from mutitask_celery.serving import serve


@pytest.mark.parametrize("module", ["Mutitask.server", "mutitask_celery.server"])
def test_server_imports(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.BaseConfig and mod.Terminal


@pytest.mark.parametrize("module", ["Mutitask.client", "mutitask_celery.client"])
def test_client_imports(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.BaseConfig and mod.FuncItem and mod.Terminal


def test_shim_is_the_same_code() -> None:
    from Mutitask.client import Terminal as Old
    from mutitask_celery.legacy.client import Terminal as New

    assert Old is New


def test_package_is_typed() -> None:
    assert (Path(mutitask_celery.__file__).parent / "py.typed").exists()


def test_celery_finds_the_app() -> None:
    from celery.app.utils import find_app

    assert find_app("mutitask_celery") is mutitask_celery.app
    mutitask_celery.app.loader.import_default_modules()  # what a worker does first (its `include`)
    assert "mutitask.run" in mutitask_celery.app.tasks


@pytest.mark.parametrize(
    "tasks",
    [42, "abc", {"a": 1}, None, [], [1, 2], ["abc"], [iter([1]), 5], range(3)],
    ids=repr,
)
def test_run_refuses_what_is_not_tasks_before_publishing(tasks: object, r: redis.Redis) -> None:
    from Mutitask.server import BaseConfig, Terminal

    with pytest.raises(TypeError) as err:
        Terminal(baseConfig=BaseConfig(deviceNumb=1)).run(tasks)
    assert isinstance(err.value, InvalidTasksError)
    assert r.dbsize() == 0  # nothing was published


def test_tasks_forms_map_to_channels() -> None:
    def gen() -> object:
        yield 1

    assert len(serve.as_sources(gen())) == 1
    assert len(serve.as_sources([gen(), [1, 2], range(3)])) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"deviceNumb": 0},
        {"deviceNumb": "5"},
        {"deviceNumb": 2, "ChannelSize": 0},
        {"deviceNumb": 2, "ChannelSize": 2.5},
        {"deviceNumb": 2, "MonitorWaitTime": -1},
        {"deviceNumb": 2, "port": "x"},
    ],
)
def test_server_config_errors(kwargs: dict[str, object]) -> None:
    from Mutitask.server import BaseConfig

    with pytest.raises(ConfigurationError):
        BaseConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"deviceID": 0, "TaskChannelID": 1},
        {"deviceID": 1, "TaskChannelID": -2},
        {"deviceID": 1, "TaskChannelID": "1"},
        {"deviceID": 1, "TaskChannelID": 1, "task_format": "pickle"},
        {"deviceID": 1, "TaskChannelID": 1, "concurrency": 0},
        {"deviceID": 1, "TaskChannelID": 1, "retries": -1},
        {"deviceID": 1, "TaskChannelID": 1, "retry_backoff": "soon"},
    ],
)
def test_client_config_errors(kwargs: dict[str, object]) -> None:
    from Mutitask.client import BaseConfig

    with pytest.raises(ConfigurationError) as err:
        BaseConfig(**kwargs)  # type: ignore[arg-type]
    assert isinstance(err.value, MutitaskError)


def two(a: object, b: object) -> None: ...


def none() -> None: ...


@pytest.mark.parametrize("fn", [None, 42, "print", two, none])
@pytest.mark.parametrize("loader", ["load_task_function", "load_save_function"])
def test_functions_must_take_one_argument(fn: object, loader: str) -> None:
    from Mutitask.client import BaseConfig, FuncItem

    item = FuncItem(baseConfig=BaseConfig(deviceID=1, TaskChannelID=1))
    with pytest.raises(TypeError) as err:
        getattr(item, loader)(fn)
    assert isinstance(err.value, FunctionError)


def test_functions_of_one_argument_are_accepted() -> None:
    from Mutitask.client import BaseConfig, FuncItem

    item = FuncItem(baseConfig=BaseConfig(deviceID=1, TaskChannelID=1))
    item.load_task_function(lambda task: task)
    item.load_save_function(print)  # *args builtins work too
    item.load_task_function(lambda task, retries=3: task)  # extra defaulted arguments are fine


def test_device_without_task_function_is_refused(redis_url: str) -> None:
    from Mutitask.client import BaseConfig, FuncItem, Terminal

    base = BaseConfig(deviceID=1, TaskChannelID=1)
    with pytest.raises(FunctionError, match="load_task_function"):
        Terminal(baseConfig=base, funcItem=FuncItem(baseConfig=base)).run()


def test_device_name_is_device_id_at_host() -> None:
    import socket

    from Mutitask.client import BaseConfig, FuncItem, Terminal

    base = BaseConfig(deviceID=7, TaskChannelID=1)
    assert Terminal(baseConfig=base, funcItem=FuncItem(base)).name == f"device7@{socket.gethostname()}"


def test_unreachable_redis_is_a_clear_error_naming_the_masked_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from Mutitask.server import BaseConfig, Terminal
    from mutitask_celery import settings
    from mutitask_celery.tools.localredis import free_port

    monkeypatch.setenv("MUTITASK_REDIS_URL", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    settings.forget()
    with pytest.raises(ConnectionError) as err:
        serve.serve(iter(["a"]), channel_size=5)
    assert "cannot reach Redis at redis://:***@127.0.0.1" in str(err.value)
    assert "hunter2" not in str(err.value)
    with pytest.raises(SystemExit) as end:  # a legacy script: one line and exit code 3, no traceback
        Terminal(baseConfig=BaseConfig(deviceNumb=1)).run(iter(["a"]))
    assert end.value.code == 3
    settings.forget()


def test_run_with_nothing_to_do_returns_at_once(redis_url: str) -> None:
    summary = serve.serve(iter([]), channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    assert summary.published == 0 and summary.channels[1].outstanding == 0
