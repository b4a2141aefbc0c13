"""Quorum queues, without a broker: the setting, the queues Celery declares under it, the QoS a
device asks for, and the error for a queue RabbitMQ holds with the other type. The real runs on
RabbitMQ are in tests/faults/test_quorum.py."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from amqp.exceptions import PreconditionFailed
from celery import Celery
from celery.worker.consumer import Consumer
from celery.worker.consumer.tasks import Tasks

from mutitask_celery import celery_app, settings
from mutitask_celery.books.transports import queues
from mutitask_celery.celery_app import app
from mutitask_celery.device.worker import DELAYED_DELIVERY, DeviceConsumer
from mutitask_celery.errors import ConfigurationError

RABBIT = "amqp://guest:guest@rabbit.example:5672/team%2F2"
NO_CONFIG = types.SimpleNamespace()


def quorum(environ: dict[str, str]) -> bool:
    return bool(
        settings.load_settings(environ={"MUTITASK_BROKER_URL": RABBIT, **environ}, config=NO_CONFIG).quorum_queues
    )


def test_the_setting_is_off_unless_turned_on() -> None:
    assert not quorum({})
    assert quorum({"MUTITASK_QUORUM_QUEUES": "1"}) and quorum({"MUTITASK_QUORUM_QUEUES": "Yes"})
    assert not quorum({"MUTITASK_QUORUM_QUEUES": "off"})
    config = types.SimpleNamespace(mutitask_quorum_queues=True, broker_url=RABBIT)
    assert settings.load_settings(environ={}, config=config).quorum_queues
    with pytest.raises(ConfigurationError, match="MUTITASK_QUORUM_QUEUES: expected on or off"):
        quorum({"MUTITASK_QUORUM_QUEUES": "quorum"})


@pytest.mark.parametrize("url", [None, "redis://127.0.0.1:6379/1", "rediss://:secret@h:6380/0"])
def test_quorum_queues_on_a_redis_broker_are_refused(url: str | None) -> None:
    environ = {"MUTITASK_QUORUM_QUEUES": "1", **({"MUTITASK_BROKER_URL": url} if url else {})}
    with pytest.raises(ConfigurationError, match="quorum queues are RabbitMQ's") as refused:
        settings.load_settings(environ=environ, config=NO_CONFIG)
    assert "secret" not in str(refused.value)


@pytest.fixture
def on_rabbitmq() -> Iterator[None]:
    """The package's app pointed at RabbitMQ with quorum queues (nothing connects), then back."""
    before = settings.current()
    celery_app.apply_settings(settings.Settings(broker_url=RABBIT, quorum_queues=True))
    try:
        yield
    finally:
        celery_app.apply_settings(before)


@pytest.mark.usefixtures("on_rabbitmq")
def test_every_channel_queue_is_a_durable_quorum_queue() -> None:
    queue = app.amqp.queues["channel7"]
    assert queue.queue_arguments == {"x-queue-type": "quorum"}
    assert queue.durable and not queue.auto_delete and not queue.exclusive
    celery_app.apply_settings(settings.Settings(broker_url=RABBIT))  # and back: Celery's cache is rebuilt
    assert not app.amqp.queues["channel7"].queue_arguments


class _Connection:
    qos_semantics_matches_spec = False  # RabbitMQ's: Celery would send a global QoS
    transport = types.SimpleNamespace(driver_type="amqp")


@pytest.mark.usefixtures("on_rabbitmq")
def test_a_device_on_quorum_queues_asks_for_no_global_qos() -> None:
    app.amqp.queues.select(["channel1", "channel2"])  # what a worker does with -Q
    consumer: Any = types.SimpleNamespace(app=app, connection=_Connection())
    assert Tasks(consumer).qos_global(consumer) is False


def test_the_device_consumer_sets_up_no_delayed_delivery() -> None:
    assert app.conf.worker_consumer == celery_app.DEVICE_CONSUMER
    assert DELAYED_DELIVERY in Consumer.Blueprint.default_steps  # Celery's: its name has not changed
    assert DeviceConsumer.Blueprint.default_steps == [
        step for step in Consumer.Blueprint.default_steps if step != DELAYED_DELIVERY
    ]


def test_global_qos_turned_back_on_is_refused() -> None:
    other = Celery(set_as_current=False)
    other.conf.update(
        broker_url=RABBIT,
        task_acks_late=True,
        accept_content=["json"],
        task_create_missing_queue_type="quorum",
        worker_detect_quorum_queues=False,
    )
    with pytest.raises(ConfigurationError, match="worker_detect_quorum_queues is off"):
        celery_app.check_compatible(other)


def test_a_queue_type_in_celeryconfig_that_contradicts_the_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules, settings.CONFIG_MODULE, types.SimpleNamespace(task_create_missing_queue_type="quorum")
    )
    other = Celery(set_as_current=False)
    other.conf.update(
        broker_url=RABBIT, task_acks_late=True, accept_content=["json"], task_create_missing_queue_type="classic"
    )
    with pytest.raises(ConfigurationError, match="task_create_missing_queue_type is 'quorum' but the channel queues"):
        celery_app.check_compatible(other)


def refusal(current: str) -> PreconditionFailed:
    """RabbitMQ's reply (3.10) to a declaration of the other type."""
    received = "none" if current == "quorum" else "the value 'quorum' of type 'longstr'"
    now = "the value 'quorum' of type 'longstr'" if current == "quorum" else "none"
    return PreconditionFailed(
        f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'channel3' in vhost 'team/2': "
        f"received {received} but current is {now}",
        (50, 10),
        "Queue.declare",
    )


@pytest.mark.usefixtures("on_rabbitmq")
def test_a_classic_queue_in_the_way_is_named_with_what_to_do() -> None:
    error = queues.type_refused(refusal(current="classic"), "channel3", app)
    assert error is not None
    text = str(error)
    assert "queue 'channel3' as a quorum queue: a classic queue of that name exists in vhost 'team/2'" in text
    assert "rabbitmqctl delete_queue -p team/2 --if-empty channel3" in text
    assert "MUTITASK_QUORUM_QUEUES off on every host" in text
    assert queues.type_refused(PreconditionFailed("PRECONDITION_FAILED - other"), "channel3", app) is None
    assert queues.type_refused(OSError("refused"), "channel3", app) is None


def test_a_quorum_queue_in_the_way_is_named_too() -> None:
    other = Celery(set_as_current=False)
    other.conf.update(broker_url=RABBIT, task_create_missing_queue_type="classic")
    error = queues.type_refused(refusal(current="quorum"), "channel3", other)
    assert error is not None and "as a classic queue: a quorum queue" in str(error)
    assert "MUTITASK_QUORUM_QUEUES=1 on every host" in str(error)
