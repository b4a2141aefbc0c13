"""Quorum queues on a real RabbitMQ (``quorum_broker``: a vhost of the test's own,
MUTITASK_QUORUM_QUEUES on), with real devices: nothing lost when a device is SIGKILLed or when
RabbitMQ itself stops and starts mid-run, a poison task still dead-lettered, the broker's
delivery count read by the devices, and a queue of the other type refused with what to do."""

from __future__ import annotations

import io
import re
import socket
import subprocess

import pytest
import redis
from helpers.processes import Processes
from helpers.runs import expected_double, poison_run, run_in_thread, run_with_a_device_killed
from helpers.services import Broker, RabbitControl
from helpers.waits import device_is_up, wait_until
from kombu.connection import Connection

import mutitask_celery as mt
from mutitask_celery import codec, keys, runtime
from mutitask_celery.books import messages
from mutitask_celery.books.recovery.redeliveries import FRESH_AFTER
from mutitask_celery.errors import ConfigurationError
from mutitask_celery.serving import serve

HOST = socket.gethostname()
COUNT = 300


def assert_every_task_ended_once(count: int) -> None:
    """Every success saved exactly once, every failure dead-lettered once, nothing outstanding."""
    assert sorted(mt.results(1)) == [n * 2 for n in range(count) if not expected_double(n)]
    assert sorted(int(f.data) for f in mt.failed(1)) == [n for n in range(count) if expected_double(n)]
    assert runtime.ledger().outstanding(1) == 0


def assert_quorum_queues_only(broker: Broker) -> None:
    """channel1 is a quorum queue, and Celery declared no delayed-delivery queue of its own."""
    types = broker.queue_types()
    assert types["channel1"] == "quorum", types
    assert not [name for name in types if name.startswith("celery_delayed")], types


@pytest.mark.usefixtures("r")
def test_a_sigkilled_device_loses_nothing(procs: Processes, quorum_broker: Broker) -> None:
    """SIGKILL while a task runs: RabbitMQ hands the message to another device (x-delivery-count
    1), which charges the death and runs it alone; every task ends exactly once."""
    out = run_with_a_device_killed(procs, COUNT)
    assert_every_task_ended_once(COUNT)
    summary = out["summary"]
    assert (summary.published, summary.succeeded + summary.failed) == (COUNT, COUNT)
    assert summary.channels[1].duplicates == 0
    assert_quorum_queues_only(quorum_broker)


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("r")
def test_rabbitmq_stopped_and_started_mid_run_loses_nothing(
    procs: Processes, quorum_broker: Broker, rabbitmq_control: RabbitControl
) -> None:
    """``rabbitmqctl stop_app`` mid-run, ``start_app`` once both devices have lost their
    connections and failed to connect again: the server waits for the broker, the devices
    reconnect, what they held comes back from the quorum queue, and every task ends exactly once."""
    env = {"PACE_SECONDS": "0.02"}  # long enough a run to be cut in the middle
    devices = [procs.device(1, 1, "paced", env=env), procs.device(2, 1, "paced", env=env)]
    for n in (1, 2):
        wait_until(device_is_up(f"device{n}@{HOST}"), 30, f"device{n}")
    thread, _ = run_in_thread([str(n) for n in range(COUNT)])
    wait_until(lambda: mt.results_count(1) >= 60, 60, "the run to be under way")
    with rabbitmq_control.stopped():
        assert runtime.ledger().outstanding(1) > 0
        for device in devices:
            wait_until(lambda d=device: "Cannot connect to amqp" in procs.output(d), 60, "a device to miss RabbitMQ")
    thread.join(180)
    assert not thread.is_alive(), "the run did not complete after RabbitMQ came back"
    assert_every_task_ended_once(COUNT)
    assert all(device.poll() is None for device in devices)  # they reconnected, not restarted
    assert_quorum_queues_only(quorum_broker)


@pytest.mark.usefixtures("r")
def test_a_poison_task_is_still_dead_lettered(procs: Processes, quorum_broker: Broker) -> None:
    """The deaths are counted from the start marks, as on classic queues (the delivery count would
    also count messages only held)."""
    run = poison_run(procs)
    assert run.deaths == 3
    assert (run.summary.published, run.summary.succeeded, run.summary.failed) == (4, 3, 1)
    (record,) = mt.failed(1)
    assert record.data == "poison" and record.reason.startswith("worker lost")


def test_a_message_that_came_back_often_goes_out_afresh(
    procs: Processes, r: redis.Redis, quorum_broker: Broker
) -> None:
    """RabbitMQ's x-delivery-count reaches the device: a message returned FRESH_AFTER times (here
    by a consumer of the test's own that rejects it) runs from a fresh copy, once."""
    task_id = messages.new_task_id()
    runtime.ledger().publish(1, [(task_id, codec.encode("17"))])
    with Connection(quorum_broker.url) as connection:  # type: ignore[no-untyped-call]  # kombu is untyped
        channel = connection.default_channel
        for _ in range(FRESH_AFTER):
            message = wait_until(lambda: channel.basic_get("channel1"), 10, "the message")
            channel.basic_reject(message.delivery_tag, requeue=True)
    dev = procs.device(1, 1)
    wait_until(lambda: mt.results(1) == [34], 30, "the task's result")
    assert f"came back {FRESH_AFTER} time(s) (x-delivery-count)" in procs.output(dev)
    wait_until(lambda: quorum_broker.queued(keys.queue(1)) == 0, 10, "the queue to be empty")
    assert runtime.ledger().outstanding(1) == 0 and r.hlen(keys.lost(1)) == 0  # held only: no death


def test_a_classic_queue_in_the_way_is_refused_with_what_to_do(
    procs: Processes, r: redis.Redis, quorum_broker: Broker
) -> None:
    """A classic channel1 already in the vhost: the server refuses to start, naming it, before it
    publishes anything; so does a device (exit code 2); the advised command clears the way."""
    assert quorum_broker.url is not None
    with Connection(quorum_broker.url) as connection:  # type: ignore[no-untyped-call]  # kombu is untyped
        connection.default_channel.queue_declare("channel1", durable=True, auto_delete=False)
    with pytest.raises(ConfigurationError, match="a classic queue of that name exists") as refused:
        serve.serve(iter(["1"]), channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    assert runtime.ledger().outstanding(1) == 0 and r.zcard(keys.unsent(1)) == 0  # nothing published
    device = procs.device(1, 1)
    assert device.wait(60) == 2
    assert "RabbitMQ refuses queue 'channel1' as a quorum queue" in procs.output(device)
    assert quorum_broker.queue_types()["channel1"] == "classic"

    advice = re.search(r"`(rabbitmqctl delete_queue [^`]+)`", str(refused.value))
    assert advice is not None, refused.value
    subprocess.run(advice.group(1).split(), check=True, capture_output=True, timeout=60)
    procs.device(2, 1)
    summary = serve.serve(iter(["1", "2"]), channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    assert summary.succeeded == 2 and sorted(mt.results(1)) == [2, 4]
    assert_quorum_queues_only(quorum_broker)


@pytest.mark.usefixtures("r")
def test_quorum_queues_with_the_redis_broker_are_refused_at_once(procs: Processes) -> None:
    """The setting on a Redis broker: a device says why and exits, before it consumes anything."""
    device = procs.device(1, 1, env={"MUTITASK_QUORUM_QUEUES": "1"})
    assert device.wait(60) != 0
    assert "quorum queues are RabbitMQ's" in procs.output(device)
