"""Headless Chromium driven over the DevTools protocol, for the web page's tests.

Why our own: the browser-automation libraries on PyPI bring (or download) a browser of
their own; this drives the system's Chromium with the few protocol calls the tests
need (navigate, evaluate, screenshot, an Authorization header on every request), over
tornado's WebSocket client, which the package already depends on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import time
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tornado.websocket import WebSocketClientConnection, websocket_connect

HEADLESS = (  # what this machine's Chromium needs to run headless, quietly, offline
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
FLAGS = (*HEADLESS, "--window-size=1400,900", "--remote-debugging-port=0")  # a page to drive
START_TIMEOUT = 30.0


def chromium_binary() -> str | None:
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


class Browser:
    """One page of a Chromium the caller started with :data:`FLAGS` and ``profile`` as its
    ``--user-data-dir`` (so the caller stops it, as every process a test starts)."""

    def __init__(self, profile: Path, alive: Callable[[], bool]) -> None:
        self._loop = asyncio.new_event_loop()
        self._next_id = 0
        port = self._debugging_port(profile, alive)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            pages = [t for t in json.load(reply) if t.get("type") == "page"]
        assert pages, "chromium has no page"
        address = pages[0]["webSocketDebuggerUrl"]

        async def connect() -> WebSocketClientConnection:
            return await websocket_connect(address, max_message_size=64 * 1024 * 1024)

        self._socket: WebSocketClientConnection = self._run(connect())
        self.call("Page.enable")
        self.call("Network.enable")

    @staticmethod
    def _debugging_port(profile: Path, alive: Callable[[], bool]) -> int:
        """Chromium writes the port it chose to ``DevToolsActivePort`` in its profile."""
        deadline = time.monotonic() + START_TIMEOUT
        marker = profile / "DevToolsActivePort"
        while True:
            if marker.is_file():
                first = marker.read_text().split("\n", 1)[0].strip()
                if first.isdigit():
                    return int(first)
            assert alive(), "chromium exited before it listened"
            assert time.monotonic() < deadline, f"chromium wrote no {marker} within {START_TIMEOUT}s"
            time.sleep(0.1)

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coroutine`` on this browser's own event loop (tornado's futures are made
        inside it, where they belong)."""
        return self._loop.run_until_complete(asyncio.wait_for(coroutine, 60))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One protocol command; its result (events that come meanwhile are dropped)."""
        self._next_id += 1
        number = self._next_id
        request = json.dumps({"id": number, "method": method, "params": params})

        async def send() -> None:
            await self._socket.write_message(request)

        async def receive() -> str | bytes | None:
            return await self._socket.read_message()

        self._run(send())
        while True:
            raw = self._run(receive())
            assert raw is not None, "the DevTools connection closed"
            message = json.loads(raw)
            if message.get("id") == number:
                assert "error" not in message, f"{method}: {message['error']}"
                result: dict[str, Any] = message.get("result", {})
                return result

    def authorize(self, user: str, password: str) -> None:
        """Send basic-auth credentials with every request of the page, fetches included."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href === " + json.dumps(url), f"{url} to load")

    def js(self, expression: str) -> Any:
        """The value of ``expression`` in the page (a promise is awaited)."""
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 30.0) -> Any:
        """Poll until ``expression`` is truthy in the page; returns its value."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            value = self.js(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def click(self, selector: str) -> None:
        found = self.js(f"(b => {{ b?.click(); return !!b; }})(document.querySelector({json.dumps(selector)}))")
        assert found, f"nothing matches {selector}"

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self._socket.close()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()
