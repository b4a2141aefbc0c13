"""Flower as a real process watching real devices: the REST client
(``mutitask_celery.flower``) and, when Chromium is installed, Flower's web page
in a real headless browser."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from helpers.browser import HEADLESS, chromium_binary
from helpers.paths import artifacts
from helpers.processes import Processes
from helpers.settings import fresh_settings
from helpers.waits import wait_until

from mutitask_celery import runtime
from mutitask_celery.errors import ConfigurationError
from mutitask_celery.flower import FlowerAuthError, FlowerError, FlowerWorker, flower_workers
from mutitask_celery.serving import serve
from mutitask_celery.tools.localredis import free_port

HOST = socket.gethostname()
DEVICES = (f"device1@{HOST}", f"device2@{HOST}")
TASKS = 30
# Devices and Flower boot in a few seconds; generous deadlines only cost time on failure.
START_TIMEOUT = 30
CHROMIUM_TIMEOUT = 60
CHROMIUM_FLAGS = (
    *HEADLESS,
    # Virtual time lets the page's ajax refresh (/workers?json=1) land before the dump.
    "--virtual-time-budget=5000",
)


@pytest.fixture(autouse=True)
def no_flower_settings_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower reads FLOWER_* from its environment: a developer's own (say
    FLOWER_BASIC_AUTH or FLOWER_UNAUTHENTICATED_API) must not change what a test starts."""
    for name in list(os.environ):
        if name.startswith("FLOWER_"):
            monkeypatch.delenv(name)


def start_flower(procs: Processes, *options: str, env: dict[str, str] | None = None) -> str:
    """Flower on a free port of 127.0.0.1, watching the test's Redis (the
    ``redis_url`` fixture sets MUTITASK_REDIS_URL for children); returns its base
    URL once the port answers HTTP. ``procs`` stops it with the test."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "mutitask_celery",
        "flower",
        f"--port={port}",
        "--address=127.0.0.1",
        *options,
    ]
    proc = procs.start(args, f"flower-{port}", env=env)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if proc.poll() is not None:
            log = procs.output(proc)[-3000:]
            raise AssertionError(f"flower exited ({proc.returncode}):\n{log}")
        try:  # /healthcheck needs no credentials, whatever the auth options
            with urllib.request.urlopen(url + "/healthcheck", timeout=1) as response:
                return response.status == 200
        except urllib.error.HTTPError:
            return True  # an HTTP answer, even an error, means the server is up
        except OSError:
            return False

    wait_until(answers, START_TIMEOUT, f"flower to answer HTTP on port {port}")
    return url


def with_credentials(url: str, user: str, password: str) -> str:
    return url.replace("http://", f"http://{user}:{password}@", 1)


def not_shown(error: BaseException, *secrets: str) -> bool:
    """No secret in what a traceback would print of ``error``: its message, its
    args, and no chained exception (whose request could carry the header)."""
    printed = "".join(traceback.format_exception_only(type(error), error)) + repr(error.args)
    chained = error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__)
    return not chained and not any(secret in printed for secret in secrets)


def wait_for_devices(
    url: str,
    ok: Callable[[FlowerWorker], bool],
    what: str,
    names: tuple[str, ...] = DEVICES,
    timeout: float = START_TIMEOUT,
    processed: int | None = None,
) -> dict[str, FlowerWorker]:
    """Poll Flower until every device of ``names`` is listed and ``ok``, and
    (when given) their processed counts add up to ``processed``; returns them."""

    def check() -> dict[str, FlowerWorker]:
        seen = {name: w for name, w in flower_workers(url).items() if name in names}
        if set(seen) != set(names) or not all(ok(w) for w in seen.values()):
            return {}
        if processed is not None and sum(w.processed for w in seen.values()) != processed:
            return {}
        return seen

    return wait_until(check, timeout, f"Flower to see {', '.join(names)} {what}")


def online(worker: FlowerWorker) -> bool:
    return worker.online


def idle(worker: FlowerWorker) -> bool:
    return worker.online and worker.active == 0


def run_tasks(n: int) -> int:
    """Run ``n`` tasks; returns how many Celery messages carried them (what Flower counts as
    processed: short tasks travel several to a message)."""
    before = runtime.ledger().stats(1).messages
    summary = serve.serve(iter([str(i) for i in range(n)]), channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    assert summary.published == n and summary.succeeded + summary.failed == n
    return runtime.ledger().stats(1).messages - before


def test_workers_online_with_processed_counts(procs: Processes, r: redis.Redis) -> None:
    procs.device(1, 1)
    device2 = procs.device(2, 1)
    url = start_flower(procs, env={"FLOWER_UNAUTHENTICATED_API": "1"})
    wait_for_devices(url, online, "online")
    carried = run_tasks(TASKS)
    seen = wait_for_devices(url, idle, f"idle after {TASKS} tasks", timeout=15, processed=carried)
    for name, device in seen.items():
        assert device.name == name and device.queues == ["channel1"]
        assert device.last_heard is not None
    # Each took its share: the counts are per device, not a copy of the total.
    assert all(0 < w.processed < carried for w in seen.values())

    # A stopped device says worker-offline: listed offline, with what Flower last knew.
    device2.send_signal(signal.SIGTERM)
    assert device2.wait(15) == 0
    (gone,) = wait_for_devices(url, lambda w: not w.online, "offline", names=DEVICES[1:], timeout=15).values()
    # Flower applies inspect replies in its own loop after answering, so its cached count
    # may lag; it never invents tasks, and an offline device holds none.
    assert gone.processed <= seen[DEVICES[1]].processed and gone.active == 0
    assert gone.queues == ["channel1"] and gone.last_heard is not None


def test_active_counts_the_task_in_hand(procs: Processes, r: redis.Redis) -> None:
    device3 = (f"device3@{HOST}",)
    procs.device(3, 2, "slow", env={"SLOW_SECONDS": "2"})
    url = start_flower(procs, env={"FLOWER_UNAUTHENTICATED_API": "1"})
    wait_for_devices(url, online, "online", names=device3)
    runtime.ledger().publish(2, [("t1", '"in hand"')])
    wait_for_devices(url, lambda w: w.active == 1, "busy with its task", names=device3, timeout=10)
    (done,) = wait_for_devices(url, idle, "done", names=device3, timeout=10, processed=1).values()
    assert done.queues == ["channel2"]


def test_basic_auth_and_a_wrong_password(procs: Processes, r: redis.Redis) -> None:
    procs.device(1, 1)
    procs.device(2, 1)
    url = start_flower(procs, "--basic-auth=watcher:s3cret-pw")
    good = with_credentials(url, "watcher", "s3cret-pw")
    wait_for_devices(good, online, "online")
    carried = run_tasks(10)
    wait_for_devices(good, idle, "idle after 10 tasks", timeout=15, processed=carried)

    with pytest.raises(FlowerAuthError) as wrong:
        flower_workers(with_credentials(url, "watcher", "not-the-pw"))
    message = str(wrong.value)
    assert message.startswith(f"Flower at http://watcher:***@127.0.0.1:{url.rsplit(':', 1)[1]} ")
    assert "refused the user and password" in message
    assert not_shown(wrong.value, "not-the-pw", "s3cret-pw")

    with pytest.raises(FlowerAuthError, match="wants credentials"):
        flower_workers(url)


def test_devices_reads_flower_when_configured(
    procs: Processes, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mutitask_celery as mt
    from mutitask_celery import settings
    from mutitask_celery.control import DeviceState

    procs.device(1, 1)
    procs.device(2, 1)
    url = start_flower(procs, "--basic-auth=watcher:s3cret-pw")
    good = with_credentials(url, "watcher", "s3cret-pw")
    wait_for_devices(good, online, "online")
    monkeypatch.setenv("MUTITASK_FLOWER_URL", good)
    fresh_settings()
    found = {d.name: d for d in mt.devices()}
    assert all(found[n].state is DeviceState.RUNNING and found[n].channels == [1] for n in DEVICES)
    run_tasks(10)
    wait_until(lambda: sum(d.done for d in mt.devices()) == 10, 15, "the devices' done counts")
    monkeypatch.setenv("MUTITASK_FLOWER_URL", with_credentials(url, "watcher", "wrong"))
    fresh_settings()
    with pytest.raises(FlowerAuthError):  # proof that devices() asked Flower
        mt.devices()
    settings.forget()


def test_closed_api_says_how_to_open_it(procs: Processes, r: redis.Redis) -> None:
    url = start_flower(procs)  # no --basic-auth and no FLOWER_UNAUTHENTICATED_API
    with pytest.raises(FlowerAuthError, match="FLOWER_UNAUTHENTICATED_API=1") as closed:
        flower_workers(with_credentials(url, "watcher", "s3cret-pw"))
    assert not_shown(closed.value, "s3cret-pw")


def test_unreachable_flower_is_a_clear_error_without_the_password() -> None:
    url = f"http://watcher:s3cret-pw@127.0.0.1:{free_port()}"  # nothing listens there
    shown = r"Flower at http://watcher:\*\*\*@127\.0\.0\.1:\d+ cannot be reached"
    with pytest.raises(FlowerError, match=shown) as err:
        flower_workers(url, timeout=2)
    assert not_shown(err.value, "s3cret-pw")
    assert not isinstance(err.value, FlowerAuthError)
    with pytest.raises(ConfigurationError, match="not a Flower URL"):
        flower_workers("redis://127.0.0.1:6379/0")


def run_chromium(procs: Processes, chromium: str, profile: Path, name: str, *args: str) -> str:
    """Headless Chromium as a real process (``procs`` stops it if it hangs); its output."""
    proc = procs.start([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], name)
    try:
        code = proc.wait(CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"chromium did not exit within {CHROMIUM_TIMEOUT}s") from None
    output = procs.output(proc)
    assert code == 0, output[-3000:]
    return output


def test_workers_page_in_a_browser(procs: Processes, r: redis.Redis, tmp_path: Path) -> None:
    chromium = chromium_binary()
    if chromium is None:
        pytest.skip(
            "Chromium is not installed (apt-get install -y chromium); it renders Flower's workers page for this test"
        )
    procs.device(1, 1)
    procs.device(2, 1)
    url = start_flower(procs, env={"FLOWER_UNAUTHENTICATED_API": "1"})
    wait_for_devices(url, online, "online")
    carried = run_tasks(TASKS)
    wait_for_devices(url, idle, f"idle after {TASKS} tasks", timeout=15, processed=carried)

    output = run_chromium(procs, chromium, tmp_path / "profile-dom", "chromium-dom", "--dump-dom", f"{url}/workers")
    dom = re.search(r"<html.*</html>", output, re.S)  # the log also holds Chromium's stderr
    assert dom is not None, output[-3000:]
    for name in DEVICES:
        assert name in dom.group(0)
    # Filled in by the page's JavaScript from /workers?json=1: proof the script ran.
    assert 'id="workers-online">2<' in dom.group(0)

    shot = artifacts(tmp_path) / "flower-workers.png"
    shot.unlink(missing_ok=True)
    run_chromium(
        procs,
        chromium,
        tmp_path / "profile-shot",
        "chromium-screenshot",
        f"--screenshot={shot}",
        "--window-size=1280,800",
        f"{url}/workers",
    )
    assert shot.is_file() and shot.stat().st_size > 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
