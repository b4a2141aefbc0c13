"""Fill the dead-letter store fast, the way devices would (used by benchmarks and tests)."""

from __future__ import annotations

from mutitask_celery import codec, keys, runtime
from mutitask_celery.books import messages
from mutitask_celery.books.ledger import Outcome

CHUNK = 1000


def fill_dead_letters(
    count: int, channel: int = 1, reason: str = "returned None", device: str = "device1@bench"
) -> list[str]:
    """Publish ``count`` tasks, take their messages off the queue and record each as failed,
    by ``device`` for ``reason``."""
    ledger = runtime.ledger()
    ids: list[str] = []
    for start in range(0, count, CHUNK):
        items = [(messages.new_task_id(), codec.encode(f"task {n}")) for n in range(start, min(count, start + CHUNK))]
        ledger.publish(channel, items)
        ledger.client.delete(keys.queue(channel))
        ledger.finish(channel, device, [Outcome(i, ok=False, reason=reason) for i, _ in items])
        ids += [i for i, _ in items]
    return ids
