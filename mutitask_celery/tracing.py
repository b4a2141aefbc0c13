"""Traces with OpenTelemetry, when it is installed (``pip install 'mutitask_celery[otel]'``).

Every OpenTelemetry import of the package is in this module, made on first use (:func:`_api`):
without OpenTelemetry nothing is imported and everything here does nothing. With it but no
tracer provider configured (the API's default, a proxy; or a no-op one), everything here also
does nothing, decided once a run and once a message, before any span is made: a message carries
nothing more, and a task costs nothing more. The provider is the user's own: set by their script
(``trace.set_tracer_provider``) or by the standard ``OTEL_*`` environment and
``opentelemetry-instrument``. What a trace holds:

- ``mutitask.server.run`` (:func:`run_span`): a server's run, from its checks to its summary,
  the current span of the threads that publish (the feeding one, the console's);
- ``mutitask.task`` (:class:`TaskSpans`): each task a device runs, one span a task (a message
  carries many), a child of the context its message carried, current while the task function
  runs (its own spans nest under it), ended once its outcome is in the books.

The context travels once a message, not once a task: in the Celery message's headers
(:func:`message_headers`), under the names of the global propagator (W3C ``traceparent``;
``tracestate`` and ``baggage`` only when they hold something). That is also where
opentelemetry-instrumentation-celery carries it: a device that runs that instrumentation too
nests the task spans under its span for the message.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from importlib import metadata
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for the type checker only; at run time see _api()
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

SCOPE = "mutitask_celery"  # the instrumentation scope of every span made here
RUN = "mutitask.server.run"
TASK = "mutitask.task"

# Attributes of RUN.
CHANNELS = "mutitask.channels"  # the run's channels (1..N)
CHANNEL_SIZE = "mutitask.channel_size"
RUN_NAME = "mutitask.run.name"  # a resumable run's name; absent for a run without one
PUBLISHED, SUCCEEDED, FAILED, RUN_TWICE = (
    "mutitask.published",
    "mutitask.succeeded",
    "mutitask.failed",
    "mutitask.run_twice",
)  # the run's summary, set as it ends
# Attributes of TASK.
CHANNEL = "mutitask.channel"
TASK_ID = "mutitask.task.id"
MESSAGE_ID = "mutitask.message.id"  # the message that carried it (one carries several tasks)
DEVICE = "mutitask.device"
OUTCOME = "mutitask.outcome"  # a TaskOutcome's value
ATTEMPTS = "mutitask.attempts"  # calls of the task function on this device (1 + retries; 0: none)
REASON = "mutitask.reason"  # why it failed (a failure's, also one that ran twice)


class TaskOutcome(str, Enum):
    """How a task ended on the device that ran it (the ``mutitask.outcome`` attribute)."""

    SUCCEEDED = "succeeded"  # its result is saved
    FAILED = "failed"  # dead-lettered: the span's status is ERROR, the reason its description
    RUN_TWICE = "run_twice"  # it ran here, but another run's outcome is the one kept
    SKIPPED = "skipped"  # not run here: it had finished elsewhere before its turn came
    HANDED_BACK = "handed_back"  # its message went back to the queue without an outcome: it runs again
    CANCELLED = "cancelled"  # its channel was cancelled before it started: it never runs (mutitask cancel)


@functools.cache
def _api() -> Any:
    """The OpenTelemetry API's modules, imported on first use; None when they are not installed."""
    try:
        from opentelemetry import context, propagate, trace
    except ImportError:
        return None
    return _Api(trace, context, propagate)


@dataclass(frozen=True)
class _Api:
    trace: Any
    context: Any
    propagate: Any

    def tracer(self) -> Tracer | None:
        """The tracer of the provider set now, or None when there is none to record spans."""
        provider = self.trace.get_tracer_provider()
        if isinstance(provider, (self.trace.ProxyTracerProvider, self.trace.NoOpTracerProvider)):
            return None
        return _tracer_of(provider)


@functools.lru_cache(maxsize=4)  # a process has one provider (tests swap theirs in and out)
def _tracer_of(provider: Any) -> Tracer:
    try:
        version: str | None = metadata.version(SCOPE)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        version = None
    return provider.get_tracer(SCOPE, version)  # type: ignore[no-any-return]


def _tracing() -> tuple[_Api, Tracer] | None:
    api = _api()
    if api is None:
        return None
    tracer = api.tracer()
    return None if tracer is None else (api, tracer)


def enabled() -> bool:
    """Whether spans are recorded here now: OpenTelemetry installed and a tracer provider set."""
    return _tracing() is not None


def message_headers() -> dict[str, str]:
    """The current trace context, as headers for one message (``traceparent``, ...); empty
    when nothing is traced here, or no span is current."""
    traced = _tracing()
    if traced is None:
        return {}
    carrier: dict[str, str] = {}
    traced[0].propagate.inject(carrier)
    return carrier


W3C_FIELDS = ("traceparent", "tracestate", "baggage")  # what the default propagators carry


def context_in(headers: Mapping[str, Any]) -> dict[str, str]:
    """The trace context in a message's ``headers``, as they are: for a message that takes on
    the tasks of another (split after a death), whether or not anything is traced here."""
    api = _api()
    fields = set(W3C_FIELDS) | (api.propagate.get_global_textmap().fields if api is not None else set())
    return {name: value for name in fields if isinstance(value := headers.get(name), str)}


class RunSpan:
    """The span of a server's run (or nothing, when nothing is traced)."""

    def __init__(self, span: Span | None = None) -> None:
        self._span = span

    def summary(self, published: int, succeeded: int, failed: int, run_twice: int) -> None:
        """The run's counts, as it ends."""
        if self._span is not None:
            counts = {PUBLISHED: published, SUCCEEDED: succeeded, FAILED: failed, RUN_TWICE: run_twice}
            self._span.set_attributes(counts)


@contextmanager
def run_span(channels: int, channel_size: int, run_name: str | None = None) -> Iterator[RunSpan]:
    """``with run_span(channels, channel_size, run_name) as run:`` the span ``mutitask.server.run``,
    current in this thread until the block ends (an exception leaving it is recorded, the status
    ERROR). A thread that publishes for the run runs in a copy of this context
    (``contextvars.copy_context().run``), so that its messages carry the run's context."""
    traced = _tracing()
    if traced is None:
        yield RunSpan()
        return
    attributes: dict[str, str | int] = {CHANNELS: channels, CHANNEL_SIZE: channel_size}
    if run_name:
        attributes[RUN_NAME] = run_name
    with traced[1].start_as_current_span(RUN, attributes=attributes) as span:
        yield RunSpan(span)


class _Running:
    """A task span made current while its task function runs (see :meth:`TaskSpans.running`)."""

    __slots__ = ("_spans", "_task_id", "_token")

    def __init__(self, spans: TaskSpans, task_id: str) -> None:
        self._spans, self._task_id = spans, task_id
        self._token: object = None

    def __enter__(self) -> None:
        self._token = self._spans._start(self._task_id)

    def __exit__(self, *_: object) -> None:
        self._spans._stop(self._task_id, self._token)


class _Nothing:
    """What a task's run is with no tracing: no span, no work."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


NOTHING = _Nothing()


class TaskSpans:
    """The spans of the tasks of one message on a device, one a task: started as each task
    starts (:meth:`running`), ended when the device knows its outcome (:meth:`ended`), all at
    the latest as the message leaves the device (the ``with`` block): those still open then
    went back to the queue (:attr:`TaskOutcome.HANDED_BACK`). Each span ends when its task's
    run ended, however long the message's other tasks and the books took after it.

    :func:`task_spans` makes one; with nothing traced it is :data:`NO_SPANS`, which does nothing.
    """

    def __init__(
        self, api: _Api | None, tracer: Tracer | None, parent: Context | None, attributes: Mapping[str, Any]
    ) -> None:
        self._api, self._tracer, self._parent = api, tracer, parent
        self._attributes = dict(attributes)
        self._open: dict[str, tuple[Span, int | None]] = {}  # task id -> its span, when its run ended (ns)

    @property
    def recording(self) -> bool:
        return self._tracer is not None

    def running(self, task_id: str) -> _Running | _Nothing:
        """``with spans.running(task_id):`` around the task's run: its span starts, current there."""
        return NOTHING if self._tracer is None else _Running(self, task_id)

    def ended(
        self,
        task_id: str,
        outcome: TaskOutcome,
        attempts: int = 0,
        reason: str = "",
        error: BaseException | None = None,
    ) -> None:
        """The task's outcome: its span ends, with the outcome, ``attempts`` (calls of the task
        function), ``reason`` (a failure's) and ``error`` (the exception behind it, recorded). A
        task whose run made no span (it never ran) gets one now, as short as it was."""
        if self._tracer is None:
            return
        opened = self._open.pop(task_id, None)
        span, ended_at = opened if opened is not None else (self._new_span(task_id), None)
        span.set_attributes({OUTCOME: outcome.value, ATTEMPTS: attempts})
        if reason:
            span.set_attribute(REASON, reason)
        if error is not None:
            span.record_exception(error)
        if outcome is TaskOutcome.FAILED:
            span.set_status(self._api.trace.Status(self._api.trace.StatusCode.ERROR, reason))  # type: ignore[union-attr]
        span.end(end_time=ended_at)

    def __enter__(self) -> TaskSpans:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Every span still open: its task went back with its message (``exc`` says why, if anything:
        a Celery ``Reject``'s reason, else the exception)."""
        reason = "" if exc is None else str(getattr(exc, "reason", "") or f"{type(exc).__name__}: {exc}")
        for task_id in list(self._open):
            self.ended(task_id, TaskOutcome.HANDED_BACK, reason=reason)

    def _new_span(self, task_id: str) -> Span:
        attributes = {**self._attributes, TASK_ID: task_id}
        kind = self._api.trace.SpanKind.CONSUMER  # type: ignore[union-attr]
        return self._tracer.start_span(TASK, context=self._parent, kind=kind, attributes=attributes)  # type: ignore[union-attr]

    def _start(self, task_id: str) -> object:
        span = self._new_span(task_id)
        self._open[task_id] = (span, None)
        api = self._api
        return api.context.attach(api.trace.set_span_in_context(span))  # type: ignore[union-attr]

    def _stop(self, task_id: str, token: object) -> None:
        self._api.context.detach(token)  # type: ignore[union-attr]
        span, _ = self._open[task_id]
        self._open[task_id] = (span, time.time_ns())


NO_SPANS = TaskSpans(None, None, None, {})


def task_spans(request: Any, channel: int, device: str, message_id: str) -> TaskSpans:
    """The spans of the tasks of the message ``request`` (a Celery task's request) carries,
    children of the context it carried; or of the current span, when it is of the same trace
    (opentelemetry-instrumentation-celery's span for the message, a child of that context) or
    the message carried none. :data:`NO_SPANS` when nothing is traced here."""
    traced = _tracing()
    if traced is None:
        return NO_SPANS
    api, tracer = traced
    carried = api.propagate.extract(_carrier(request, api.propagate.get_global_textmap().fields))
    current = api.trace.get_current_span().get_span_context()
    sent = api.trace.get_current_span(carried).get_span_context()
    parent = None if current.is_valid and (not sent.is_valid or sent.trace_id == current.trace_id) else carried
    attributes = {CHANNEL: channel, DEVICE: device, MESSAGE_ID: message_id}
    return TaskSpans(api, tracer, parent, attributes)


def _carrier(request: Any, fields: set[str]) -> dict[str, str]:
    """The propagator's fields in a task's request: a worker puts a message's headers there;
    ``apply()`` (a task run in this process) keeps the headers it was given apart."""
    given = getattr(request, "headers", None)
    headers = given if isinstance(given, Mapping) else {}
    carrier = {}
    for name in fields:
        value = getattr(request, name, None) or headers.get(name)
        if isinstance(value, str):
            carrier[name] = value
    return carrier
