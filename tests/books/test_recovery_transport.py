"""Recovery against a transport of the test's own: it knows no ledger and no recovery, so
recovery can be tried on what it must mend without a broker. The books are a real Redis."""

from __future__ import annotations

import pytest
import redis

import mutitask_celery as mt
from mutitask_celery import codec, keys
from mutitask_celery.books import messages
from mutitask_celery.books.ledger import Ledger, Outcome
from mutitask_celery.books.recovery.reaper import Reaper
from mutitask_celery.books.recovery.redeliveries import Redeliveries
from mutitask_celery.books.transports.base import Groups, Transport
from mutitask_celery.books.transports.kombu_broker import KombuBroker


class Recorded(Transport):
    """A books step journals its tasks (as on another broker); after the step this transport
    pushes their messages onto the queue's list itself and records them, or drops them when
    told to (a message lost between the books and the devices)."""

    lua_mode = "journal"
    notes_holds = False

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(mt.app, client)
        self.sent: list[list[str]] = []
        self.lose = False

    def step_messages(self, channel: int, groups: Groups, suspect: bool = False) -> list[str]:
        return [""] * len(groups)

    def step_templates(self, channel: int, groups: Groups) -> list[list[str | int]]:
        return []

    def after_step(self, channel: int, groups: Groups) -> None:
        if not self.lose:
            self._push(channel, groups)
        self.client.zrem(keys.unsent(channel), *[task_id for group in groups for task_id, _ in group])

    def send(self, channel: int, groups: Groups, pipe: redis.client.Pipeline, suspect: bool = False) -> None:
        pipe.execute()
        self._push(channel, groups)

    def _push(self, channel: int, groups: Groups) -> None:
        queue = keys.queue(channel)
        self.client.lpush(queue, *[messages.build(self.app, queue, channel, group) for group in groups])
        self.sent += [[task_id for task_id, _ in group] for group in groups]

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


def _tasks(n: int) -> list[messages.Item]:
    return [(messages.new_task_id(), codec.encode(i)) for i in range(n)]


@pytest.mark.parametrize("trial", range(3))
def test_the_sweep_sends_again_once_what_a_transport_lost(r: redis.Redis, trial: int) -> None:
    """Tasks in the books that reached no queue come back after two sweeps (one is not proof:
    a message crosses the gap in microseconds), once, through the transport; tasks it carried
    are left alone, and so are finished ones."""
    transport = Recorded(r)
    ledger = Ledger(r, mt.app, transport)
    reaper = Reaper(ledger, dead_after=10)
    kept, lost = _tasks(5), _tasks(3)
    ledger.publish(1, kept, batch=5)
    transport.lose = True
    ledger.publish(1, lost, batch=3)
    transport.lose = False
    r.delete(keys.queue(1))  # what reached the queue was taken by devices and finished
    for task_id, _ in kept:
        ledger.finish(1, "device1@test", [Outcome(task_id, ok=True, result="1")])
    assert transport.sent == [[t for t, _ in kept]]
    assert reaper.sweep([1]) == 0  # seen missing once: not yet proof
    assert reaper.sweep([1]) == 3
    assert transport.sent[1:] == [[t] for t, _ in lost]  # each alone, through the transport
    assert reaper.sweep([1]) == 0 and reaper.sweep([1]) == 0  # placed now: never twice
    assert len(transport.sent) == 4


def test_a_dead_publishers_journal_goes_out_again_through_the_transport(r: redis.Redis) -> None:
    """On a broker that redelivers by itself, recovery resends what a publisher that died left
    in the journal, through the transport, and clears it."""
    sent: list[tuple[str, list[list[str]]]] = []

    class Publisher:
        def send(self, queue: str, channel: int, groups: Groups, suspect: bool = False) -> None:
            sent.append((queue, [[task_id for task_id, _ in group] for group in groups]))

    transport = KombuBroker(mt.app, r, publisher=Publisher())  # type: ignore[arg-type]  # duck-typed
    ledger = Ledger(r, mt.app, transport)
    recovery = Redeliveries(ledger, transport)
    tasks = _tasks(2)
    r.hset(keys.pending(1), mapping=dict(tasks))  # in the books; the publisher died before sending
    r.zadd(keys.unsent(1), dict.fromkeys([t for t, _ in tasks], 1.0))
    assert recovery.resend_unsent([1]) == 2
    assert sorted(sum((g for _, groups in sent for g in groups), [])) == sorted(t for t, _ in tasks)
    assert r.zcard(keys.unsent(1)) == 0 and recovery.resend_unsent([1]) == 0
