"""The autoscaler's figures without a Redis: the JSON shape of ``/api/scaler`` (what KEDA's
``valueLocation`` paths read), how devices are counted, and their two metrics in ``/metrics``."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mutitask_celery.books.ledger import ChannelBooks, ChannelStats
from mutitask_celery.control import DeviceState, Presence
from mutitask_celery.web import metrics, scaler


def books(outstanding: int, held: int = 0) -> ChannelBooks:
    return ChannelBooks(ChannelStats(published=outstanding), outstanding, held)


PRESENT = [
    Presence("device1@h", [1], DeviceState.RUNNING),
    Presence("device2@h", [1, 2], DeviceState.PAUSED),
    Presence("device3@h", [2], DeviceState.STOPPING),
    Presence("device4@h", [1], DeviceState.OFFLINE),
    Presence("device5", [], DeviceState.OFFLINE),  # expected, never came
]


def test_the_json_has_the_shape_an_autoscaler_reads() -> None:
    figures = scaler.figures([1, 2, 7], {1: books(12, held=2), 2: books(3), 7: books(0)}, PRESENT)
    assert figures.as_dict() == {
        "backlog": 15,
        "devices": 3,
        "channels": {
            "1": {"backlog": 12, "devices": 2},
            "2": {"backlog": 3, "devices": 2},
            "7": {"backlog": 0, "devices": 0},  # a channel the books know, with nothing to do
        },
    }


def gjson(document: dict[str, Any], path: str) -> Any:
    """What a GJSON path of plain keys (KEDA's ``valueLocation``) finds in ``document``."""
    found: Any = document
    for key in path.split("."):
        found = found[key]
    return found


def test_kedas_value_locations_find_numbers() -> None:
    document = scaler.figures([1, 10], {1: books(5), 10: books(8)}, PRESENT).as_dict()
    assert gjson(document, "backlog") == 13
    assert gjson(document, "channels.1.backlog") == 5
    assert gjson(document, "channels.10.backlog") == 8  # keys are whole numbers: no "1" ... "10" mix-up
    assert gjson(document, "channels.1.devices") == 2
    assert list(document["channels"]) == ["1", "10"]


def test_nothing_known_is_zero_everywhere() -> None:
    assert scaler.figures([], {}, []).as_dict() == {"backlog": 0, "devices": 0, "channels": {}}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_carry_the_backlog_and_the_devices_by_state() -> None:
    figures = scaler.figures([1, 2], {1: books(12), 2: books(0)}, PRESENT)
    row = {
        "published": 20, "succeeded": 8, "failed": 0, "run_twice": 0, "revived": 0, "cancelled": 0, "outstanding": 12,
        "waiting": 10, "channel_size": 10, "dead_letters": 0, "rate_limit": None,
    }  # fmt: skip
    device = {"in_hand": 0, "done": 0}
    snapshot = {
        "channels": [{**row, "channel": 1}, {**row, "channel": 2, "outstanding": 0}],
        "devices": [{**device, "name": p.name, "state": p.state.value} for p in PRESENT],
        "scaler": figures.as_dict(),
    }
    found = samples(metrics.render(snapshot).decode())
    assert found[("mutitask_backlog_tasks", (("channel", "1"),))] == 12
    assert found[("mutitask_backlog_tasks", (("channel", "2"),))] == 0
    counts = {state.value: found[("mutitask_devices", (("state", state.value),))] for state in DeviceState}
    assert counts == {"running": 1, "paused": 1, "stopping": 1, "offline": 2}
