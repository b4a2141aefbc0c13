"""The job of ``mutitask demo``, and its child processes: what the server and devices run.

Why a module of its own: the demo's server and devices are separate processes
(``python -m mutitask_celery.tools.demo_job server SITE IMAGES`` and
``python -m mutitask_celery.tools.demo_job device N``, started by
:mod:`mutitask_celery.tools.demo`, not meant to be run by hand). They need the job,
its task functions (channel 1 fetches web pages, channel 2 convolves images)
and the entry point, not the orchestration that starts Redis, watches the
processes, handles signals and prints the tables; and that orchestration reads
better without a page-fetcher and an image convolution in the middle of it.
The demo process itself uses :class:`FlakySite` (the local web site) and
:func:`make_image` from here.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mutitask_celery import runtime, settings
from mutitask_celery.connection import check_redis
from mutitask_celery.device.worker import device_name
from mutitask_celery.errors import BrokerUnavailable, ExitCode

PAGES = 30
FLAKY_EVERY = 7  # pages 7, 14, 21, 28 answer 503 the first time they are asked
IMAGES = 24
LATE_IMAGES = (5, 12, 19)  # not on disk when the server publishes them
IMAGE_SIZE = 48
KERNEL = ((-1, 1, -1), (1, -1, 1), (-1, 1, -1))  # the seed's kernel
CHANNELS = (1, 2)
DEVICES = {1: (1,), 2: (2,), 3: (1, 2)}  # device -> channels it works
WHAT = {1: "web pages", 2: "image convolutions"}

# The exit codes of ``mutitask demo`` (see mutitask_celery.tools.demo's epilog), and of its child processes.


# -- the job: what the devices run ---------------------------------------------------------


def fetch_page(url: str) -> str | None:
    """Channel 1's task function: the page's title, or None (a failure) unless it answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (a local http:// URL)
            body = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError:
        return None  # as the seed's spider: not 200, the task failed
    match = re.search(r"<title>(.*?)</title>", body)
    return match.group(1) if match else body[:60]


def read_pgm(path: str | Path) -> list[list[int]]:
    """A binary greyscale PGM (P5) image as rows of pixels."""
    data = Path(path).read_bytes()
    magic, width, height, maxval, pixels = data.split(maxsplit=4)
    if magic != b"P5" or int(maxval) != 255:
        raise ValueError(f"{path}: not an 8-bit binary PGM image")
    w, h = int(width), int(height)
    return [list(pixels[r * w : (r + 1) * w]) for r in range(h)]


def write_pgm(path: Path, rows: Sequence[Sequence[int]]) -> None:
    header = f"P5\n{len(rows[0])} {len(rows)}\n255\n".encode()
    path.write_bytes(header + bytes(v for row in rows for v in row))


def convolve(rows: Sequence[Sequence[int]], kernel: Sequence[Sequence[int]] = KERNEL) -> list[list[int]]:
    """2-D convolution with zero padding, output the size of the input (scipy's ``mode='same'``)."""
    h, w, k = len(rows), len(rows[0]), len(kernel) // 2
    flipped = [list(reversed(r)) for r in reversed(kernel)]
    out = []
    for y in range(h):
        line = []
        for x in range(w):
            total = 0
            for dy in range(-k, k + 1):
                yy = y + dy
                if 0 <= yy < h:
                    src, krow = rows[yy], flipped[dy + k]
                    for dx in range(-k, k + 1):
                        xx = x + dx
                        if 0 <= xx < w:
                            total += src[xx] * krow[dx + k]
            line.append(total)
        out.append(line)
    return out


def convolve_image(path: str) -> dict[str, Any]:
    """Channel 2's task function: convolve the image at ``path`` (raises if it is not there yet)."""
    result = convolve(read_pgm(path))
    flat = [v for row in result for v in row]
    digest = hashlib.sha256(json.dumps(result).encode()).hexdigest()[:12]
    return {
        "image": Path(path).name,
        "size": [len(result[0]), len(result)],
        "mean": round(sum(flat) / len(flat), 2),
        "sha256": digest,
    }


def make_image(folder: Path, number: int) -> Path:
    rng = random.Random(number)
    path = folder / f"{number:02d}.pgm"
    write_pgm(path, [[rng.randrange(256) for _ in range(IMAGE_SIZE)] for _ in range(IMAGE_SIZE)])
    return path


# -- the local web site ---------------------------------------------------------------------


class FlakySite:
    """``/page/<n>``: every FLAKY_EVERY-th page answers 503 the first time it is asked, then 200."""

    def __init__(self) -> None:
        asked: set[int] = set()
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                match = re.fullmatch(r"/page/(\d+)", self.path)
                if match is None:
                    self.send_error(404)
                    return
                n = int(match.group(1))
                with lock:
                    first = n not in asked
                    asked.add(n)
                if first and n % FLAKY_EVERY == 0:
                    self.send_error(503, "busy, try again later")
                    return
                body = f"<html><title>page {n}</title><body>page {n} of the demo site</body></html>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="demo-site", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- the child processes -------------------------------------------------------------------


def _pages(site: str) -> Iterator[str]:
    for n in range(1, PAGES + 1):
        yield f"{site}/page/{n}"


def _images(folder: str) -> Iterator[str]:
    for n in range(1, IMAGES + 1):
        yield str(Path(folder) / f"{n:02d}.pgm")


def _run_server(site: str, images: str) -> int:
    """The server: the legacy API, one generator per channel; returns when every task has finished."""
    from mutitask_celery.legacy.server import BaseConfig, Terminal

    summary = Terminal(baseConfig=BaseConfig(deviceNumb=len(DEVICES))).run([_pages(site), _images(images)])
    return ExitCode.OK if summary.published == PAGES + IMAGES else ExitCode.FAILED


def _run_device(number: int) -> int:
    """Devices 1 and 2 are legacy client scripts; device 3 is a Celery worker on both channels."""
    functions: dict[int, Callable[[str], Any]] = {1: fetch_page, 2: convolve_image}
    channels = DEVICES[number]
    if len(channels) == 1:
        from mutitask_celery.legacy.client import BaseConfig, FuncItem, Terminal

        base = BaseConfig(deviceID=number, TaskChannelID=channels[0])
        funcitem = FuncItem(baseConfig=base)
        funcitem.load_task_function(functions[channels[0]])
        return Terminal(baseConfig=base, funcItem=funcitem).run()
    from mutitask_celery.channels import register_channel
    from mutitask_celery.connection import exit_on_unreachable
    from mutitask_celery.device.worker import run_worker

    conf = runtime.reset(settings.configure())
    with exit_on_unreachable():
        check_redis(conf.redis_url)
    for channel in channels:
        register_channel(channel, functions[channel])
    return run_worker(device_name(number), channels)


def _child_main(argv: Sequence[str]) -> int:
    if len(argv) == 3 and argv[0] == "server":
        return _run_server(argv[1], argv[2])
    if len(argv) == 2 and argv[0] == "device" and argv[1].isdigit() and int(argv[1]) in DEVICES:
        return _run_device(int(argv[1]))
    print(
        "usage: python -m mutitask_celery.tools.demo_job (server SITE IMAGES | device N): the demo's own processes; "
        "run `mutitask demo`",
        file=sys.stderr,
    )
    return ExitCode.USAGE


if __name__ == "__main__":
    try:
        raise SystemExit(_child_main(sys.argv[1:]))
    except BrokerUnavailable as exc:
        print(f"mutitask demo: {exc}", file=sys.stderr)
        raise SystemExit(ExitCode.UNREACHABLE) from None
