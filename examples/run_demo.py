"""Run the seed's two examples on this machine: a server and two devices each.

``python examples/run_demo.py`` uses the Redis at ``MUTITASK_REDIS_URL`` (its
channel 1 is emptied first; ``mutitask demo`` is the full demo, with a private
Redis of its own). It serves a local web site for the
spider example, makes images for the convolution example, runs each example's
server and device scripts as separate processes, and prints what happened:
results saved, tasks in the dead-letter store and why. Every process it
starts is stopped at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import local_site  # noqa: E402
from make_images import make_images  # noqa: E402

import mutitask_celery as mt  # noqa: E402
from mutitask_celery.tools.processes import stop_process_groups  # noqa: E402


def run_example(name: str, env: dict[str, str], quiet_devices: bool) -> None:
    print(f"\n=== {name}: a server and two devices ===", flush=True)
    devices = []
    out = subprocess.DEVNULL if quiet_devices else None
    try:
        for n in (1, 2):
            devices.append(
                subprocess.Popen(
                    [sys.executable, str(HERE / f"{name}_device{n}.py")],
                    env=env,
                    stdout=out,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        server = subprocess.run(
            [sys.executable, str(HERE / f"{name}_server.py")], env=env, stdin=subprocess.DEVNULL, check=False
        )
        if server.returncode != 0:
            raise SystemExit(f"{name}_server.py exited with {server.returncode}")
    finally:
        stop_process_groups(devices, grace=15)
    failed = mt.failed(1)
    print(f"results saved in ResultChannel1: {mt.results_count(1)}; failed tasks: {len(failed)}")
    for record in failed[:3]:
        print(f"  failed: {record.data!r:.60} on {record.device}: {record.reason}")
    if len(failed) > 3:
        print(f"  ... and {len(failed) - 3} more (mutitask_celery.failed(1) lists them all)")


def main() -> int:
    site = local_site.start()
    try:
        with tempfile.TemporaryDirectory(prefix="mutitask-demo-") as images:
            make_images(Path(images))
            env = {
                **os.environ,
                "MUTITASK_DEMO_SITE": f"http://127.0.0.1:{site.server_port}",
                "MUTITASK_DEMO_IMAGES": images,
                "PYTHONUNBUFFERED": "1",
            }
            for name in ("spider", "convolve"):
                mt.delete_failed(1)
                mt.clear_results(1)
                run_example(name, env, quiet_devices=True)
    except KeyboardInterrupt:
        print("\ninterrupted: devices stopped", file=sys.stderr)
        return 130
    finally:
        site.shutdown()
        site.server_close()
    print("\nThe demo ran both of the seed's examples unchanged on Celery.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
