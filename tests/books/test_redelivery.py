"""A broker that redelivers by itself (RabbitMQ), without one: the poison-task count
kept from the ``redelivered`` flag, a quorum queue's delivery count, and the journal of
tasks not yet handed to the broker. A recording publisher stands in for RabbitMQ; the end-to-end tests run the
real one (tests/surface/test_end_to_end.py, ``[amqp]``)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import redis

import mutitask_celery as mt
from mutitask_celery import codec, keys
from mutitask_celery.books import messages
from mutitask_celery.books.ledger import Ledger, Outcome
from mutitask_celery.books.recovery.base import Verdict
from mutitask_celery.books.recovery.redeliveries import FRESH_AFTER, Redeliveries
from mutitask_celery.books.transports.kombu_broker import KombuBroker
from mutitask_celery.books.transports.publisher import BrokerPublisher


class Recorder(BrokerPublisher):
    """Keeps what would have been published: (queue, [task ids of each message])."""

    def __init__(self) -> None:
        super().__init__(mt.app)
        self.sent: list[tuple[str, list[list[str]]]] = []
        self.fail = False
        self.suspects = False

    def send(self, queue: str, channel: int, groups: Sequence[Sequence[messages.Item]], suspect: bool = False) -> None:
        if self.fail:
            raise ConnectionError("broker gone")
        self.sent.append((queue, [[task_id for task_id, _ in group] for group in groups]))
        self.suspects = suspect


Books = tuple[Ledger, Redeliveries, Recorder]


@pytest.fixture
def books(r: redis.Redis) -> Books:
    recorder = Recorder()
    transport = KombuBroker(mt.app, r, publisher=recorder)
    ledger = Ledger(r, mt.app, transport)
    return ledger, Redeliveries(ledger, transport, max_attempts=3), recorder


def items(*names: str) -> list[messages.Item]:
    return [(f"id-{name}", codec.encode(name)) for name in names]


def test_publishing_journals_until_the_broker_has_the_messages(r: redis.Redis, books: Books) -> None:
    ledger, redeliveries, recorder = books
    ledger.publish(1, items("a", "b", "c"), batch=2)
    assert recorder.sent == [("channel1", [["id-a", "id-b"], ["id-c"]])]
    assert r.hlen(keys.pending(1)) == 3 and r.zcard(keys.unsent(1)) == 0

    recorder.fail = True
    with pytest.raises(ConnectionError):
        ledger.publish(1, items("d"))
    assert r.hexists(keys.pending(1), "id-d") and r.zrange(keys.unsent(1), 0, -1) == ["id-d"]
    recorder.fail = False
    assert redeliveries.resend_unsent([1]) == 0  # too recent: its publisher may still be at work
    assert redeliveries.resend_unsent([1], grace=0) == 1
    assert recorder.sent[-1] == ("channel1", [["id-d"]]) and r.zcard(keys.unsent(1)) == 0


def start(r: redis.Redis, device: str, message_id: str, alone: bool = True) -> None:
    """What a device does before it runs a message's tasks: mark it started (``alone``: with no
    other task of its process beside it, as on a one-slot device)."""
    mt.runtime.devices().started(device, 1, message_id, alone=alone)


def test_a_poison_task_is_buried_at_its_third_death(r: redis.Redis, books: Books) -> None:
    ledger, redeliveries, _ = books
    ledger.publish(1, items("p"))
    start(r, "device1@h", "id-p")  # ...and the device dies running it
    assert redeliveries.settle(1, "device2@h", "id-p", items("p")) is Verdict.RUN_ALONE  # died once: alone
    start(r, "device2@h", "id-p")
    assert redeliveries.settle(1, "device1@h", "id-p", items("p")) is Verdict.RUN_ALONE
    start(r, "device1@h", "id-p")
    assert redeliveries.settle(1, "device1@h", "id-p", items("p")) is Verdict.SKIP  # third death: buried
    (record,) = mt.failed(1)
    assert record.id == "id-p" and record.reason == "worker lost: the device died while running it, 3 time(s)"
    assert r.hlen(keys.pending(1)) == 0 and r.hlen(keys.lost(1)) == 0


def test_a_death_beside_other_tasks_never_buries(r: redis.Redis, books: Books) -> None:
    ledger, redeliveries, _ = books
    ledger.publish(1, items("t"))
    r.hset(keys.lost(1), "id-t", 2)
    start(r, "device1@h", "id-t", alone=False)  # on a device of several slots, beside other tasks
    assert redeliveries.settle(1, "device2@h", "id-t", items("t")) is Verdict.RUN_ALONE
    assert r.hget(keys.lost(1), "id-t") == "3" and mt.failed_count() == 0


def test_only_a_started_message_is_charged_a_death(r: redis.Redis, books: Books) -> None:
    ledger, redeliveries, _ = books
    ledger.publish(1, items("a"))
    for _ in range(5):  # held by devices that died (or paused ones that gave it back) before starting it
        assert redeliveries.settle(1, "device1@h", "id-a", items("a")) is Verdict.RUN
    assert r.hget(keys.lost(1), "id-a") is None
    start(r, "device1@h", "id-a")
    assert redeliveries.settle(1, "device2@h", "id-a", items("a")) is Verdict.RUN_ALONE  # a real death now
    assert r.hget(keys.lost(1), "id-a") == "1"


def test_a_batch_that_killed_a_device_goes_back_one_task_a_message(r: redis.Redis, books: Books) -> None:
    ledger, redeliveries, recorder = books
    ledger.publish(1, items("a", "b", "c"), batch=3)
    start(r, "device1@h", "m-abc")
    ledger.finish(1, "device1@h", [Outcome("id-b", ok=True, result='"B"')])  # finished meanwhile
    assert redeliveries.settle(1, "device2@h", "m-abc", items("a", "b", "c")) is Verdict.SKIP
    assert recorder.sent[-1] == ("channel1", [["id-a"], ["id-c"]]) and recorder.suspects
    assert r.hgetall(keys.lost(1)) == {"id-a": "1", "id-c": "1"}


def test_a_finished_task_delivered_again_does_not_run(r: redis.Redis, books: Books) -> None:
    ledger, redeliveries, _ = books
    ledger.publish(1, items("a"))
    ledger.finish(1, "device1@h", [Outcome("id-a", ok=True, result='"A"')])
    assert redeliveries.settle(1, "device2@h", "id-a", items("a")) is Verdict.SKIP  # only its ack was lost
    assert r.hlen(keys.lost(1)) == 0 and mt.results(1) == ["A"]


def test_a_message_that_came_back_often_goes_out_afresh(r: redis.Redis, books: Books) -> None:
    """A quorum queue's x-delivery-count at FRESH_AFTER: the tasks go out in a fresh message (the
    broker's count starts again) before a delivery limit would drop it; deaths still count."""
    ledger, redeliveries, recorder = books
    assert redeliveries.fresh_after == FRESH_AFTER
    ledger.publish(1, items("a", "b"), batch=2)
    assert redeliveries.settle(1, "device1@h", "m-ab", items("a", "b"), deliveries=FRESH_AFTER - 1) is Verdict.RUN
    sent = len(recorder.sent)
    assert redeliveries.settle(1, "device1@h", "m-ab", items("a", "b"), deliveries=FRESH_AFTER) is Verdict.SKIP
    assert recorder.sent[sent:] == [("channel1", [["id-a"], ["id-b"]])] and not recorder.suspects
    assert r.hlen(keys.lost(1)) == 0 and r.hlen(keys.pending(1)) == 2  # held only: no death, nothing lost

    start(r, "device1@h", "id-a")  # ...and the device dies running it
    assert redeliveries.settle(1, "device2@h", "id-a", items("a"), deliveries=FRESH_AFTER + 5) is Verdict.SKIP
    assert recorder.sent[-1] == ("channel1", [["id-a"]]) and recorder.suspects  # the fresh copy runs alone
    assert r.hget(keys.lost(1), "id-a") == "1"

    r.hset(keys.lost(1), "id-b", 2)
    start(r, "device1@h", "id-b")  # its third death, running alone: buried, however often it came back
    assert redeliveries.settle(1, "device2@h", "id-b", items("b"), deliveries=FRESH_AFTER) is Verdict.SKIP
    (record,) = mt.failed(1)
    assert record.id == "id-b" and record.reason.startswith("worker lost")
