"""Where the Redis URL comes from: explicit > environment > celeryconfig.py > default."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
from helpers.paths import ROOT

from mutitask_celery import app, settings
from mutitask_celery.connection import same_redis
from mutitask_celery.errors import ConfigurationError

CONFIG = types.SimpleNamespace(mutitask_redis_url="redis://config-host:6379/3", broker_url="amqp://config-broker//")


def test_default_when_nothing_is_set() -> None:
    conf = settings.load_settings(environ={}, config=types.SimpleNamespace())
    assert conf.redis_url == "redis://127.0.0.1:6379/0"
    assert conf.broker == conf.redis_url and same_redis(conf.broker, conf.redis_url)


def test_celeryconfig_beats_default() -> None:
    conf = settings.load_settings(environ={}, config=CONFIG)
    assert conf.redis_url == "redis://config-host:6379/3"
    assert conf.broker == "amqp://config-broker//" and not same_redis(conf.broker, conf.redis_url)


def test_environment_beats_celeryconfig() -> None:
    env = {"MUTITASK_REDIS_URL": "redis://env-host:6380/1", "MUTITASK_BROKER_URL": "redis://env-host:6380/1"}
    conf = settings.load_settings(environ=env, config=CONFIG)
    assert conf.redis_url == "redis://env-host:6380/1"
    assert same_redis(conf.broker, conf.redis_url)


def test_explicit_arguments_beat_everything() -> None:
    env = {"MUTITASK_REDIS_URL": "redis://env-host:6380/1"}
    url = settings.redis_url_from_parts(
        host="10.0.0.5",
        port=7000,
        db=2,
        password="p@ss:w/rd",
        base=settings.load_settings(environ=env, config=CONFIG).redis_url,
    )
    conf = settings.load_settings({"redis_url": url}, environ=env, config=CONFIG)
    assert conf.redis_url == "redis://:p%40ss%3Aw%2Frd@10.0.0.5:7000/2"


def test_legacy_parts_fill_in_from_the_other_sources() -> None:
    assert settings.redis_url_from_parts(db=4, base="redis://h:1234/0") == "redis://h:1234/4"
    assert settings.redis_url_from_parts(base="redis://h:1234/0") is None


@pytest.mark.parametrize("kw", [{"port": 0}, {"port": "6379"}, {"db": -1}, {"db": True}])
def test_bad_legacy_parts_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        settings.redis_url_from_parts(**kw)  # type: ignore[arg-type]


def test_bad_environment_url_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="MUTITASK_REDIS_URL"):
        settings.load_settings(environ={"MUTITASK_REDIS_URL": "localhost"}, config=types.SimpleNamespace())


def test_password_is_masked() -> None:
    assert settings.mask_url("redis://user:secret@h:1/0") == "redis://user:***@h:1/0"
    assert "secret" not in settings.mask_url("rediss://:secret@h:1/0")
    assert settings.mask_url("redis://h:1/0") == "redis://h:1/0"


def test_celery_settings_for_this_job() -> None:
    conf = app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.worker_prefetch_multiplier == 1
    assert not conf.worker_send_task_events  # off: a fifth of a device's speed on short tasks (README, Flower)
    assert conf.task_ignore_result and not conf.result_backend


def _broker_seen_from(tmp_path: Path, config_text: str | None, env: dict[str, str]) -> str:
    if config_text is not None:
        (tmp_path / "celeryconfig.py").write_text(config_text)
    code = "import mutitask_celery; print(mutitask_celery.app.conf.broker_url)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), **env},
    )
    return out.stdout.strip()


def test_celeryconfig_file_is_read_by_the_app(tmp_path: Path) -> None:
    text = 'mutitask_redis_url = "redis://from-file:6379/5"\nworker_prefetch_multiplier = 1\n'
    assert _broker_seen_from(tmp_path, text, {}) == "redis://from-file:6379/5"
    env = {"MUTITASK_REDIS_URL": "redis://from-env:6379/6"}
    assert _broker_seen_from(tmp_path, text, env) == "redis://from-env:6379/6"


def test_celeryconfig_overrides_our_celery_defaults(tmp_path: Path) -> None:
    (tmp_path / "celeryconfig.py").write_text("worker_prefetch_multiplier = 4\ntask_acks_late = False\n")
    code = (
        "import mutitask_celery as mt; c = mt.app.conf; "
        "print(c.worker_prefetch_multiplier, c.task_acks_late, c.task_serializer)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
    )
    assert out.stdout.split() == ["4", "False", "json"]  # the user's two, and our default for the rest


def test_a_worker_loads_the_task_module_beside_those_celeryconfig_includes(tmp_path: Path) -> None:
    """The app's ``include`` names the device's task module for workers, and keeps the modules a
    user's ``celeryconfig.py`` includes (Celery's ``include=`` argument alone would hide them)."""
    (tmp_path / "celeryconfig.py").write_text('include = ["mytasks"]\n')
    code = "import mutitask_celery as mt; print(*mt.app.conf.include)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{ROOT}"},
    )
    assert out.stdout.split() == ["mytasks", "mutitask_celery.device.tasks"]


def test_no_celeryconfig_means_the_default(tmp_path: Path) -> None:
    assert _broker_seen_from(tmp_path, None, {}) == "redis://127.0.0.1:6379/0"


def test_environment_set_after_import_is_honoured(r: object, redis_url: str) -> None:
    """A script that sets MUTITASK_REDIS_URL after importing the package talks to that Redis."""
    code = (
        "import os, mutitask_celery as mt\n"
        "from mutitask_celery import keys, runtime\n"
        f"os.environ['MUTITASK_REDIS_URL'] = {redis_url!r}\n"
        "runtime.ledger().client.set('marker', 'here')\n"
        "print(mt.app.conf.broker_url, mt.results_count(1))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "MUTITASK_REDIS_URL": "redis://127.0.0.1:1/0"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=Path(__file__).parent
    )
    assert out.stdout.split() == [redis_url, "0"]
    assert r.get("marker") == "here"  # type: ignore[attr-defined]
