"""``/metrics``: the books and the roster in Prometheus's text format.

Read afresh at every scrape (the books are the truth, and several web processes may
serve the same run), from the overview's data so the page and the metrics never
disagree. Every name starts ``mutitask_``; labels are ``channel``, ``device`` and ``state``.

==========================================  =======  ====================================
``mutitask_published_total``                counter  tasks a server published (not reloads)
``mutitask_succeeded_total``                counter  tasks that succeeded
``mutitask_failed_total``                   counter  tasks dead-lettered (None, raised, lost)
``mutitask_run_twice_total``                counter  outcomes that came a second time
``mutitask_revived_total``                  counter  burials as worker lost a late success replaced
``mutitask_outstanding``                    gauge    published and not yet finished
``mutitask_waiting``                        gauge    of those, waiting in the channel
``mutitask_backlog_tasks``                  gauge    tasks still to do, as ``/api/scaler`` says
                                                     (``web.scaler``): the outstanding ones,
                                                     for an autoscaler
``mutitask_channel_size``                   gauge    the channel's ``ChannelSize``
``mutitask_dead_letters``                   gauge    records in the dead-letter store now
``mutitask_rate_limit_per_second``          gauge    the channel's rate limit, when it has one
``mutitask_device_state``                   gauge    1 for the device's state (``state`` label: running,
                                                     paused, stopping, offline)
``mutitask_device_in_hand``                 gauge    tasks the device is running
``mutitask_device_tasks_done_total``        counter  tasks the device has finished
``mutitask_devices``                        gauge    devices in each state (``state`` label),
                                                     every state listed, 0 included
==========================================  =======  ====================================

``mutitask_backlog_tasks`` is the figure :func:`.scaler.figures` computes from the books the
overview read, so it equals ``mutitask_outstanding`` in every scrape: the one is the table's
column, the other the name an autoscaler's query looks for. ``mutitask_devices`` counts the
devices of ``mutitask_device_state`` (the overview's, asked over remote control), so the
two agree in every scrape too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mutitask_celery.control import DeviceState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_CHANNEL_COUNTERS = (
    ("published", "published", "Tasks a server published to the channel (a reload of dead letters is not counted)."),
    ("succeeded", "succeeded", "Tasks of the channel that succeeded."),
    ("failed", "failed", "Tasks of the channel that were dead-lettered."),
    ("run_twice", "run_twice", "Outcomes of the channel's tasks that came a second time (the first is kept)."),
    ("revived", "revived", "Burials as worker lost that a late success replaced (in succeeded and in failed)."),
    ("cancelled", "cancelled", "Tasks of the channel that left the books unrun: the channel was cancelled."),
)
_CHANNEL_GAUGES = (
    ("outstanding", "outstanding", "Tasks published and not yet finished."),
    ("waiting", "waiting", "Outstanding tasks waiting in the channel (what ChannelSize bounds)."),
    ("channel_size", "channel_size", "The channel's ChannelSize."),
    ("dead_letters", "dead_letters", "Records of the channel in the dead-letter store now."),
)


class BooksCollector(Collector):
    """Metric families built from one overview snapshot (``read`` returns it)."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        snapshot = self.read()
        channels, devices = snapshot["channels"], snapshot["devices"]
        for name, field, doc in _CHANNEL_COUNTERS:
            counter = CounterMetricFamily(f"mutitask_{name}", doc, labels=["channel"])
            for row in channels:
                counter.add_metric([str(row["channel"])], row[field])
            yield counter
        for name, field, doc in _CHANNEL_GAUGES:
            gauge = GaugeMetricFamily(f"mutitask_{name}", doc, labels=["channel"])
            for row in channels:
                gauge.add_metric([str(row["channel"])], row[field])
            yield gauge
        limit = GaugeMetricFamily(
            "mutitask_rate_limit_per_second",
            "Tasks a second the channel may start, all devices together.",
            labels=["channel"],
        )
        for row in channels:
            if row["rate_limit"] is not None:
                limit.add_metric([str(row["channel"])], row["rate_limit"])
        yield limit
        yield _backlog(snapshot["scaler"])
        yield from _device_metrics(devices)
        yield _device_counts(devices)


def _backlog(figures: dict[str, Any]) -> Metric:
    """``mutitask_backlog_tasks`` of the overview's ``scaler`` (:meth:`.ScalerFigures.as_dict`)."""
    backlog = GaugeMetricFamily(
        "mutitask_backlog_tasks",
        "Tasks still to do: published (or reloaded) and not yet finished, waiting, held by devices or running.",
        labels=["channel"],
    )
    for channel, load in figures["channels"].items():
        backlog.add_metric([channel], load["backlog"])
    return backlog


def _device_counts(devices: list[dict[str, Any]]) -> Metric:
    """``mutitask_devices``: how many devices are in each state, every state listed."""
    counts = Counter(device["state"] for device in devices)
    family = GaugeMetricFamily("mutitask_devices", "Devices in each state.", labels=["state"])
    for state in DeviceState:
        family.add_metric([state.value], counts[state.value])
    return family


def _device_metrics(devices: list[dict[str, Any]]) -> Iterator[Metric]:
    state = GaugeMetricFamily("mutitask_device_state", "1 for the state the device is in.", labels=["device", "state"])
    in_hand = GaugeMetricFamily("mutitask_device_in_hand", "Tasks the device is running.", labels=["device"])
    done = CounterMetricFamily("mutitask_device_tasks_done", "Tasks the device has finished.", labels=["device"])
    for device in devices:
        for each in DeviceState:
            state.add_metric([device["name"], each.value], 1.0 if device["state"] == each.value else 0.0)
        in_hand.add_metric([device["name"]], device["in_hand"])
        done.add_metric([device["name"]], device["done"])
    yield from (state, in_hand, done)


def render(snapshot: dict[str, Any]) -> bytes:
    """``snapshot`` (an overview's data) as Prometheus text."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BooksCollector(lambda: snapshot))
    return generate_latest(registry)
