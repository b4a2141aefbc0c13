"""Traces with OpenTelemetry (mutitask_celery.tracing): a span for the server's run, one span a
task on the device that ran it, the run's context carried once a message; and without
OpenTelemetry, nothing imported and nothing added.

In this process, a test's tracer provider is swapped in as the API's global and out again after
it (:func:`spans`): the API lets a process set its provider only once, and the other tests of the
session must run untraced, as they were written."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers.paths import ROOT, SCRIPTS
from helpers.processes import Processes
from helpers.services import Broker
from helpers.waits import device_is_up, wait_until
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import mutitask_celery as mt
from mutitask_celery import codec, keys, runtime, tracing
from mutitask_celery.books import messages
from mutitask_celery.channels import register_channel
from mutitask_celery.device import lifecycle, tasks

HOST = socket.gethostname()


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A tracer provider of this test's own, its spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


def queued(r: redis.Redis, channel: int = 1) -> list[dict[str, Any]]:
    """The messages waiting on the channel's queue, as kombu keeps them, oldest first."""
    return [json.loads(raw) for raw in reversed(r.lrange(keys.queue(channel), 0, -1))]


def run_in_process(envelope: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a queued message's tasks here, as a device's worker would (its headers included)."""
    life = lifecycle.DeviceLife(HOST)  # apply() runs it as the host's name
    monkeypatch.setattr(tasks.app, lifecycle.DEVICE_ATTRIBUTE, life, raising=False)
    args, kwargs, _ = messages.body_of(envelope)
    headers = envelope["headers"]
    tasks.run_items.apply(args=args, kwargs=kwargs, task_id=headers["id"], headers=headers, throw=True)


def by_task(found: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    tasks_ = [s for s in found if s.name == tracing.TASK]
    spans_ = {str((s.attributes or {})[tracing.TASK_ID]): s for s in tasks_}
    assert len(spans_) == len(tasks_), "one span a task"
    return spans_


def test_one_span_a_task_of_a_batched_message_in_the_publishers_trace(
    r: redis.Redis, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracer = trace.get_tracer("test")

    def work(task: str) -> str | None:
        with tracer.start_as_current_span("inside"):  # the task function's own span
            if task == "bad":
                raise ValueError("bad task")
            return None if task == "none" else task.upper()

    register_channel(1, work, retries=1, retry_backoff=0.0, time_limit=30)  # on a runner thread
    items = [(f"t-{task}", codec.encode(task)) for task in ("a", "b", "none", "bad")]
    with tracer.start_as_current_span("publisher") as publisher:
        runtime.ledger().publish(1, items, batch=4)
    (envelope,) = queued(r)  # one message for the four tasks
    assert envelope["headers"]["traceparent"].split("-")[1] == f"{publisher.get_span_context().trace_id:032x}"
    spans.clear()
    run_in_process(envelope, monkeypatch)
    found = spans.get_finished_spans()
    task_spans = by_task(found)
    assert sorted(task_spans) == sorted(task_id for task_id, _ in items)
    context = publisher.get_span_context()
    for span in task_spans.values():
        assert span.context.trace_id == context.trace_id and span.parent is not None
        assert span.parent.span_id == context.span_id and span.kind is trace.SpanKind.CONSUMER
        attributes = span.attributes or {}
        assert attributes[tracing.CHANNEL] == 1 and attributes[tracing.DEVICE] == HOST  # apply()'s worker name
        assert attributes[tracing.MESSAGE_ID] == envelope["headers"]["id"]
    outcome = {t: (s.attributes or {})[tracing.OUTCOME] for t, s in task_spans.items()}
    attempts = {t: (s.attributes or {})[tracing.ATTEMPTS] for t, s in task_spans.items()}
    assert outcome == {"t-a": "succeeded", "t-b": "succeeded", "t-none": "failed", "t-bad": "failed"}
    assert attempts == {"t-a": 1, "t-b": 1, "t-none": 1, "t-bad": 2}  # a None is never retried
    assert {t: s.status.status_code for t, s in task_spans.items()} == {
        "t-a": StatusCode.UNSET,
        "t-b": StatusCode.UNSET,
        "t-none": StatusCode.ERROR,
        "t-bad": StatusCode.ERROR,
    }
    records = {record.id: record.reason for record in mt.failed(1)}
    for task_id in ("t-none", "t-bad"):
        assert task_spans[task_id].status.description == records[task_id]
        assert (task_spans[task_id].attributes or {})[tracing.REASON] == records[task_id]
    assert records["t-bad"] == "ValueError: bad task (after 1 retry)"
    assert [e.name for e in task_spans["t-none"].events] == []  # no exception behind a None
    (event,) = task_spans["t-bad"].events
    assert event.name == "exception" and (event.attributes or {})["exception.type"] == "ValueError"
    inside = [s for s in found if s.name == "inside"]
    assert len(inside) == 5  # t-bad tried twice
    assert {s.parent.span_id for s in inside if s.parent} <= {s.context.span_id for s in task_spans.values()}
    assert all(s.context.trace_id == context.trace_id for s in inside)


def test_a_task_that_ran_twice_says_so_and_is_no_error(
    r: redis.Redis, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The books keep the first outcome; a second run's span says run_twice, even a failure."""
    register_channel(1, lambda task: None if task == "none" else task)
    runtime.ledger().publish(1, [("t-a", codec.encode("a")), ("t-none", codec.encode("none"))], batch=2)
    (envelope,) = queued(r)
    run_in_process(envelope, monkeypatch)
    spans.clear()
    run_in_process(envelope, monkeypatch)  # delivered twice
    again = by_task(spans.get_finished_spans())
    assert {t: (s.attributes or {})[tracing.OUTCOME] for t, s in again.items()} == {
        "t-a": "run_twice",
        "t-none": "run_twice",
    }
    assert (again["t-none"].attributes or {})[tracing.REASON] == "returned None"
    assert again["t-none"].status.status_code is StatusCode.UNSET
    assert again["t-a"].parent is None  # published with no span current: each task its own trace


def test_the_context_costs_one_header_a_message_never_a_byte_a_task(
    r: redis.Redis, spans: InMemorySpanExporter
) -> None:
    app, queue = runtime.ledger().app, keys.queue(1)

    def sizes() -> tuple[int, int]:
        one = [("t0", codec.encode("x"))]
        many = [(f"t{n}", codec.encode("x")) for n in range(50)]
        return len(messages.build(app, queue, 1, one)), len(messages.build(app, queue, 1, many))

    plain = sizes()
    with trace.get_tracer("test").start_as_current_span("publisher") as publisher:
        traced = sizes()
        header = json.loads(messages.build(app, queue, 1, [("t", '"x"')]))["headers"]
    context = publisher.get_span_context()
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert {k: v for k, v in header.items() if k in tracing.W3C_FIELDS} == {"traceparent": traceparent}
    cost = len(f', "traceparent": "{traceparent}"')
    assert cost == 74
    assert (traced[0] - plain[0], traced[1] - plain[1]) == (cost, cost)


def test_the_servers_run_is_a_span_and_its_messages_carry_it(
    r: redis.Redis, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's span covers serve() (the legacy Terminal.run's too); the feeding runs in its
    context. The run's messages are run here, as they come, by this test's own device."""
    from helpers.runs import run_in_thread

    register_channel(1, str.upper)
    server, out = run_in_thread(["a", "b", "c"])
    deadline = time.monotonic() + 60
    while server.is_alive() and time.monotonic() < deadline:
        popped = r.brpop([keys.queue(1)], timeout=0.2)  # the next message, or a look at the run
        if popped is not None:
            run_in_process(json.loads(popped[1]), monkeypatch)
    server.join(10)
    assert not server.is_alive() and out["summary"].succeeded == 3
    (run_span,) = [s for s in spans.get_finished_spans() if s.name == tracing.RUN]
    assert dict(run_span.attributes or {}) == {
        tracing.CHANNELS: 1,
        tracing.CHANNEL_SIZE: 10,
        tracing.PUBLISHED: 3,
        tracing.SUCCEEDED: 3,
        tracing.FAILED: 0,
        tracing.RUN_TWICE: 0,
    }
    task_spans = by_task(spans.get_finished_spans())
    assert len(task_spans) == 3
    assert all(s.parent is not None and s.parent.span_id == run_span.context.span_id for s in task_spans.values())
    assert all(s.context.trace_id == run_span.context.trace_id for s in task_spans.values())


def test_the_run_span_names_its_run_and_records_its_failure(r: redis.Redis, spans: InMemorySpanExporter) -> None:
    """A run's name, when it has one; a run that fails: status ERROR, the exception recorded."""
    from mutitask_celery.errors import InvalidTasksError
    from mutitask_celery.serving import serve

    with pytest.raises(InvalidTasksError):
        serve.serve([], channel_size=10, run_name="traced")  # refused before its run: no span
    assert spans.get_finished_spans() == ()
    with tracing.run_span(2, 10, "traced") as run:
        run.summary(0, 0, 0, 0)
    with pytest.raises(KeyError), tracing.run_span(1, 10):
        raise KeyError("lost")
    named, failed = spans.get_finished_spans()
    assert (named.name, dict(named.attributes or {})) == (
        tracing.RUN,
        {
            tracing.CHANNELS: 2,
            tracing.CHANNEL_SIZE: 10,
            tracing.RUN_NAME: "traced",
            tracing.PUBLISHED: 0,
            tracing.SUCCEEDED: 0,
            tracing.FAILED: 0,
            tracing.RUN_TWICE: 0,
        },
    )
    assert failed.status.status_code is StatusCode.ERROR and [e.name for e in failed.events] == ["exception"]


def test_tasks_taken_back_from_a_dead_device_stay_in_their_runs_trace(
    r: redis.Redis, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device dies running a batch: each task goes back alone, in a message of its own built
    by whoever reaps (untraced here), carrying the context the batch carried."""
    from mutitask_celery.books.recovery.reaper import Reaper
    from mutitask_celery.connection import redis_now
    from mutitask_celery.control import Taken

    with trace.get_tracer("test").start_as_current_span("publisher"):
        runtime.ledger().publish(1, [("b1", '"1"'), ("b2", '"2"'), ("b3", '"3"')], batch=3)
    (envelope,) = queued(r)
    r.delete(keys.queue(1))
    tag, message_id = envelope["properties"]["delivery_tag"], envelope["headers"]["id"]
    r.hset(keys.KOMBU_UNACKED, tag, json.dumps([envelope, "", keys.queue(1)]))  # as kombu delivers it
    r.zadd(keys.KOMBU_UNACKED_INDEX, {tag: time.time()})
    runtime.devices().heard("device9@h", in_hand=Taken(message_id, tag, 3, 1))
    runtime.devices().started("device9@h", 1, message_id)
    then = redis_now(r) - 100  # and then it died
    r.hset(keys.DEVICES_SEEN, "device9@h", f"{then:.6f}")
    r.zadd(keys.DEVICES_BEATS, {"device9@h": then})
    with monkeypatch.context() as untraced:
        untraced.setattr(trace, "_TRACER_PROVIDER", None)  # the reaper's process traces nothing
        Reaper(runtime.ledger(), dead_after=10).reap()
    singles = queued(r)
    assert sorted(m["headers"]["id"] for m in singles) == ["b1", "b2", "b3"]
    assert {m["headers"]["traceparent"] for m in singles} == {envelope["headers"]["traceparent"]}


BLOCKED = """
import json, sys
sys.modules["opentelemetry"] = None  # not importable: `import opentelemetry...` raises ImportError
import mutitask_celery as mt
from mutitask_celery import codec, keys, runtime, tracing
from mutitask_celery.books import messages
from mutitask_celery.channels import register_channel
from mutitask_celery.device import tasks

register_channel(1, str.upper)
runtime.ledger().publish(1, [("t1", codec.encode("a")), ("t2", codec.encode("b"))], batch=2)
with tracing.run_span(1, 10) as run:
    run.summary(1, 1, 0, 0)
    envelope = json.loads(runtime.ledger().client.rpop(keys.queue(1)))
args, kwargs, _ = messages.body_of(envelope)
tasks.run_items.apply(args=args, kwargs=kwargs, task_id=envelope["headers"]["id"], headers=envelope["headers"])
loaded = sorted(name for name, module in sys.modules.items() if "opentelemetry" in name and module is not None)
print(json.dumps({"results": mt.results(1), "headers": sorted(envelope["headers"]), "enabled": tracing.enabled(),
                  "loaded": loaded}))
"""


def test_without_opentelemetry_nothing_is_imported_and_a_task_runs(r: redis.Redis, redis_url: str) -> None:
    env = {"PYTHONPATH": str(ROOT), "MUTITASK_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["results"] == ["A", "B"] and seen["enabled"] is False and seen["loaded"] == []
    assert not set(seen["headers"]) & set(tracing.W3C_FIELDS)


def test_with_no_provider_nothing_is_added(r: redis.Redis) -> None:
    """OpenTelemetry installed, but no tracer provider set (the API's proxy): no span, no header."""
    assert not tracing.enabled()
    with tracing.run_span(1, 10):
        runtime.ledger().publish(1, [("t1", codec.encode("a"))])
    (envelope,) = queued(r)
    assert not set(envelope["headers"]) & set(tracing.W3C_FIELDS)
    assert tracing.task_spans(object(), 1, "d", "m") is tracing.NO_SPANS


# -- end to end: a server script and a device script, each its own process with its own provider


def read_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_traced_run_end_to_end(procs: Processes, r: redis.Redis, broker: Broker, tmp_path: Path) -> None:
    """A legacy server script and a legacy device script, each writing its spans to a file: one
    span a task, in the run's trace, under its span; attempts, outcomes and dead letters as the
    books have them. On both brokers: the context travels in the message's headers on each."""
    from helpers.runs import expected_double

    count = 200  # fast tasks: batched, up to ChannelSize 50 a message
    server_file, device_file = tmp_path / "server-spans.jsonl", tmp_path / "device-spans.jsonl"
    procs.python(
        SCRIPTS / "traced.py", str(device_file), str(SCRIPTS / "device.py"), "1", "1", "double", "--retries", "1",
        name="device1",
    )  # fmt: skip
    wait_until(device_is_up(f"device1@{HOST}"), 60, "device1")
    server = procs.python(
        SCRIPTS / "traced.py", str(server_file), str(SCRIPTS / "server.py"), str(count), name="server"
    )
    assert server.wait(180) == 0, procs.output(server)
    (run,) = [s for s in read_spans(server_file) if s["name"] == tracing.RUN]
    failures = {str(n): expected_double(n) for n in range(count) if expected_double(n)}
    assert run["attributes"] == {
        tracing.CHANNELS: 1,
        tracing.CHANNEL_SIZE: 50,
        tracing.PUBLISHED: count,
        tracing.SUCCEEDED: count - len(failures),
        tracing.FAILED: len(failures),
        tracing.RUN_TWICE: 0,
    }

    def all_task_spans() -> list[dict[str, Any]]:
        found = [s for s in read_spans(device_file) if s["name"] == tracing.TASK]
        return found if len(found) >= count else []

    found = wait_until(all_task_spans, 60, "a span for every task")
    by_id = {s["attributes"][tracing.TASK_ID]: s for s in found}
    assert len(found) == len(by_id) == count  # one span a task, no more
    for span in found:
        assert span["context"]["trace_id"] == run["context"]["trace_id"]
        assert span["parent_id"] == run["context"]["span_id"] and span["kind"] == "SpanKind.CONSUMER"
        assert span["attributes"][tracing.CHANNEL] == 1 and span["attributes"][tracing.DEVICE] == f"device1@{HOST}"
    messages_ = {s["attributes"][tracing.MESSAGE_ID] for s in found}
    assert len(messages_) < count / 2  # most messages carried several tasks, one span each
    dead = {record.id: record for record in mt.failed(1, limit=None)}
    assert {record.data for record in dead.values()} == set(failures)
    for task_id, span in by_id.items():
        attributes, status = span["attributes"], span["status"]
        if task_id in dead:
            reason = dead[task_id].reason
            assert attributes[tracing.OUTCOME] == "failed" and attributes[tracing.REASON] == reason
            assert status == {"status_code": "ERROR", "description": reason}
            raised = reason.startswith("ValueError")
            assert attributes[tracing.ATTEMPTS] == (2 if raised else 1)  # --retries 1; a None is never retried
            events = [(e["name"], e["attributes"].get("exception.type")) for e in span["events"]]
            assert events == ([("exception", "ValueError")] if raised else [])
        else:
            assert attributes[tracing.OUTCOME] == "succeeded" and attributes[tracing.ATTEMPTS] == 1
            assert status["status_code"] == "UNSET" and tracing.REASON not in attributes
