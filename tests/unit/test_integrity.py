"""Books that read lower: a loss at once on one Redis, after a grace behind confirming replicas."""

from __future__ import annotations

import pytest
import redis

from mutitask_celery.books import integrity
from mutitask_celery.books.integrity import Watermarks
from mutitask_celery.errors import BooksLost
from mutitask_celery.replication import ReplicaCount


class Unreachable:
    """A client as the check sees it: whether replicas confirm its steps, and an INFO it cannot get."""

    def __init__(self, replicas: int) -> None:
        self.count = ReplicaCount(replicas)

    def info(self, *_: object) -> dict[str, object]:
        raise redis.ConnectionError("gone")


def test_on_one_redis_a_lower_counter_is_a_loss_at_once() -> None:
    books = Watermarks()
    books.check({"succeeded": 10}, {}, Unreachable(0))  # type: ignore[arg-type]
    with pytest.raises(BooksLost, match="succeeded was 10, now 7"):
        books.check({"succeeded": 7}, books.mark(), Unreachable(0))  # type: ignore[arg-type]


def test_behind_confirming_replicas_a_counter_may_read_lower_for_a_while() -> None:
    """A failover's unconfirmed steps, repeated by their writers: lower, then back up, no loss;
    lower for longer than the grace: a loss."""
    clock = [1000.0]
    client = Unreachable(1)
    books = Watermarks(clock=lambda: clock[0])
    books.check({"succeeded": 10}, {}, client)  # type: ignore[arg-type]
    books.check({"succeeded": 7}, books.mark(), client)  # type: ignore[arg-type]  # no loss yet
    assert books.mark() == {"succeeded": 10}  # the mark stays
    clock[0] += integrity.grace() - 1
    books.check({"succeeded": 12}, books.mark(), client)  # type: ignore[arg-type]  # climbed back: the grace ends
    clock[0] += 5
    books.check({"succeeded": 11}, books.mark(), client)  # type: ignore[arg-type]  # a new grace starts now
    clock[0] += integrity.grace() - 1
    books.check({"succeeded": 11}, books.mark(), client)  # type: ignore[arg-type]
    clock[0] += 2
    with pytest.raises(BooksLost, match="succeeded was 12, now 11"):
        books.check({"succeeded": 11}, books.mark(), client)  # type: ignore[arg-type]


def test_the_reply_of_a_confirmed_step_is_never_taken_back() -> None:
    client = Unreachable(1)
    books = Watermarks()
    books.check({"done": 10}, {}, client)  # type: ignore[arg-type]
    with pytest.raises(BooksLost, match="done was 12, now 11"):
        books.check({"done": 11}, {"done": 12}, client, confirmed=True)  # type: ignore[arg-type]
