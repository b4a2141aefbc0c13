"""Run a test script with traces on: ``traced.py SPANS_FILE SCRIPT [ARGS...]``.

Sets a tracer provider whose spans go to SPANS_FILE as each one ends (a SimpleSpanProcessor),
one JSON object a line (the SDK's ``ReadableSpan.to_json``), then runs SCRIPT (e.g.
tests/scripts/device.py or server.py) as ``__main__`` with ARGS: the script itself is
untraced code, as a user's is, and is traced by the provider alone.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class JsonLines(SpanExporter):
    """Each span as one line of JSON, appended to a file in one write."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(span.to_json(indent=None) + "\n" for span in spans).encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, lines)
            finally:
                os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


if __name__ == "__main__":
    spans_file, script, *args = sys.argv[1:]
    provider = TracerProvider(resource=Resource.create({"service.name": os.path.basename(script)}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLines(spans_file)))
    trace.set_tracer_provider(provider)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")
