"""A device that leaves (SIGTERM) hands its messages back itself, with the reaper's own step
and no death (``Recovery.hand_back``): a message not started goes back as it came, one that
started meanwhile is left to run, and once its grace ran out the running ones go back too,
each task alone, a result being saved buried as 'worker lost while saving'. Real Redis."""

from __future__ import annotations

import json

import redis

import mutitask_celery as mt
from mutitask_celery import codec, keys, runtime
from mutitask_celery.control import Taken

DEVICE = "device7@test"


def take(r: redis.Redis, ids: list[str], tag: str) -> str:
    """Publish ``ids`` as one message and have DEVICE take it (kombu's unacked entry, its note)."""
    runtime.ledger().publish(1, [(t, codec.encode(t)) for t in ids], batch=len(ids))
    envelope = json.loads(r.rpop(keys.queue(1)) or b"")
    message_id = str(envelope["headers"]["id"])
    r.hset(keys.KOMBU_UNACKED, tag, json.dumps([envelope, "", keys.queue(1)]))
    r.zadd(keys.KOMBU_UNACKED_INDEX, {tag: 1700000000.5})
    runtime.devices().heard(DEVICE, in_hand=Taken(message_id, tag, len(ids), 1))
    return message_id


def test_a_message_not_started_goes_back_whole_and_one_that_started_stays(r: redis.Redis) -> None:
    waiting = take(r, ["a", "b"], "tag-1")
    running = take(r, ["c"], "tag-2")
    runtime.devices().started(DEVICE, 1, running)  # it started: the device runs it on
    assert runtime.recovery().hand_back(DEVICE, keep=(), started=False) == 1
    back = [json.loads(m) for m in r.lrange(keys.queue(1), 0, -1)]
    assert [m["headers"]["id"] for m in back] == [waiting]  # the same message, whole
    assert back[0]["properties"]["delivery_tag"] != "tag-1"  # under a tag of its own
    assert set(r.hkeys(keys.inhand(DEVICE))) == {running}
    assert r.hlen(keys.lost(1)) == 0  # no death


def test_kept_messages_stay_in_hand(r: redis.Redis) -> None:
    kept = take(r, ["a"], "tag-1")
    assert runtime.recovery().hand_back(DEVICE, keep={kept}, started=False) == 0
    assert r.llen(keys.queue(1)) == 0 and r.hexists(keys.inhand(DEVICE), kept)


def test_when_the_grace_ran_out_the_running_tasks_go_back_uncharged(r: redis.Redis) -> None:
    ledger = runtime.ledger()
    message_id = take(r, ["a", "b", "c"], "tag-1")
    runtime.devices().started(DEVICE, 1, message_id)
    assert ledger.claim(1, DEVICE, message_id, "run1", ["c"]) == [1]
    assert ledger.mark_claims(1, DEVICE, message_id, "run1", ["c"], "saving") == ["c"]  # c was being saved
    assert runtime.recovery().hand_back(DEVICE, keep=(), started=True) == 1
    back = r.lrange(keys.queue(1), 0, -1)
    assert len(back) == 2  # a and b, each alone...
    assert not any('"suspect"' in m for m in back)  # ...and not suspects: they killed nothing
    assert r.hlen(keys.lost(1)) == 0  # no death charged
    (record,) = mt.failed(1)
    assert record.data == "c" and record.reason.startswith("worker lost while saving")
    assert r.hlen(keys.inhand(DEVICE)) == 0 and r.hlen(keys.claims(1)) == 0
    assert ledger.outstanding(1) == 2  # a and b, to run elsewhere
