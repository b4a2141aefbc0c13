"""A device's own decisions: how many messages it holds, and its kept wanted state."""

from __future__ import annotations

import pytest

from mutitask_celery.device import wanted
from mutitask_celery.device.prefetch import LONG, SHORT, PrefetchTuner


class FakeQoS:
    """kombu's QoS as the tuner uses it: a prefetch count changed by steps."""

    def __init__(self, value: int) -> None:
        self.value = value

    def increment_eventually(self, n: int = 1) -> int:
        self.value += n
        return self.value

    def decrement_eventually(self, n: int = 1) -> int:
        self.value = max(1, self.value - n)
        return self.value


def test_quick_messages_raise_the_prefetch_to_two_per_slot_and_slow_ones_bring_it_back() -> None:
    qos = FakeQoS(20)
    tuner = PrefetchTuner(qos, slots=20)
    tuner.observe(0.05)
    assert qos.value == 40 and tuner.extra
    for _ in range(5):
        tuner.observe((SHORT + LONG) / 2)  # between the bounds: keeps what it has
    assert qos.value == 40
    tuner.observe(600.0)  # one long task is enough to stop holding a message back
    assert qos.value == 20 and not tuner.extra
    tuner.observe(0.05)  # the average is still long: one quick message changes nothing
    assert qos.value == 20


def test_a_device_keeps_its_wanted_state_and_reads_redis_for_others() -> None:
    state = wanted.WantedState()
    reads: list[str] = []

    def read(answer: bool, who: str) -> bool:
        reads.append(who)
        return answer

    state.install("device1@h", paused=False)
    assert state.is_paused("device1@h", lambda: read(True, "device1")) is False  # kept: no read
    assert state.is_paused("device2@h", lambda: read(True, "device2")) is True  # not this device
    assert reads == ["device2"]
    state.told(True)
    assert state.is_paused("device1@h", lambda: read(False, "device1")) is True
    state.forget()
    assert state.is_paused("device1@h", lambda: read(False, "device1")) is False
    assert reads == ["device2", "device1"]


def test_a_read_in_flight_does_not_undo_the_operators_word() -> None:
    state = wanted.WantedState()
    state.install("device1@h", paused=False)

    def slow_read() -> bool:
        state.told(True)  # pause() arrives while the heartbeat's read is on its way
        return False  # ...and the read saw the state from before it

    state.refresh(slow_read)
    assert state.is_paused("device1@h", lambda: False) is True


def test_a_stale_copy_is_not_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    state = wanted.WantedState()
    state.install("device1@h", paused=False)
    clock = [1000.0]
    monkeypatch.setattr(wanted.time, "monotonic", lambda: clock[0])
    state.told(False)
    clock[0] += wanted.STALE + 1  # heartbeats stopped: Redis is asked again
    assert state.is_paused("device1@h", lambda: True) is True
