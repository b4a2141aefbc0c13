"""Draw docs/web-overview.png, the README's picture of ``mutitask web``.

A private redis-server, three 'paced' test devices (tests/scripts/device.py: double
the task after 10 ms; multiples of 10 return None, of 13 raise) working 20,000 tasks
on channel 1 and 10,000 on channel 2 at ChannelSize 50, the page, and headless
Chromium taking the picture a minute into the run. Run: .venv/bin/python scripts/web_screenshot.py
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers.browser import FLAGS, Browser, chromium_binary  # noqa: E402
from helpers.paths import SCRIPTS  # noqa: E402

from mutitask_celery import runtime, settings  # noqa: E402
from mutitask_celery.serving import serve  # noqa: E402
from mutitask_celery.tools.localredis import LocalRedis, free_port  # noqa: E402
from mutitask_celery.tools.processes import stop_process_groups  # noqa: E402

RUN_FOR = 60.0  # seconds of the run before the picture


def main() -> int:
    chromium = chromium_binary()
    if chromium is None:
        print("web_screenshot: Chromium is not installed (apt-get install -y chromium)", file=sys.stderr)
        return 1
    started: list[subprocess.Popen[bytes]] = []
    with LocalRedis() as server:
        env = {
            **os.environ,
            "MUTITASK_REDIS_URL": server.url,
            "MUTITASK_BROKER_URL": "",
            "PYTHONPATH": f"{ROOT}{os.pathsep}{SCRIPTS}",
            "MUTITASK_WEB_PASSWORD": "",
        }
        os.environ.update({k: env[k] for k in ("MUTITASK_REDIS_URL", "MUTITASK_BROKER_URL")})
        runtime.reset(settings.configure())

        def start(*args: str) -> None:
            quiet = subprocess.DEVNULL
            started.append(subprocess.Popen(args, env=env, stdout=quiet, stderr=quiet, start_new_session=True))

        try:
            helper = str(SCRIPTS / "device.py")
            for device, channel in ((1, 1), (2, 1), (3, 2)):
                start(sys.executable, helper, str(device), str(channel), "paced")
            port = free_port()
            start(sys.executable, "-m", "mutitask_celery", "web", "--port", str(port))
            tasks = [(str(n) for n in range(20_000)), (str(n) for n in range(10_000))]
            run = threading.Thread(
                target=serve.serve,
                args=(tasks,),
                kwargs={"channel_size": 50, "stdin": io.StringIO(""), "out": io.StringIO()},
                daemon=True,
            )
            run.start()
            time.sleep(RUN_FOR)  # a picture of a run under way: its length is the point, not a wait
            profile = Path(server.workdir) / "chromium"
            start(chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank")
            browser = Browser(profile, alive=lambda: started[-1].poll() is None)
            size = {"width": 1400, "height": 640, "deviceScaleFactor": 1, "mobile": False}
            browser.call("Emulation.setDeviceMetricsOverride", **size)
            browser.open(f"http://127.0.0.1:{port}/")
            browser.wait_for("document.querySelectorAll('#devices tbody tr[data-device]').length === 3", "3 devices")
            browser.wait_for("document.querySelectorAll('#recent tbody tr[data-id]').length > 0", "dead letters")
            out = ROOT / "docs" / "web-overview.png"
            browser.screenshot(out)
            browser.close()
            print(f"web_screenshot: wrote {out}")
        finally:
            stop_process_groups(started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
