"""The deployment as shipped: ``deploy/redis/*`` on the Redis users have, restarted mid-run.

``tests/helpers/shipped_redis.py`` starts ``redis-server`` from the shipped config
and ACL file (only address, port, paths and passwords adapted). A job runs through
the ``mutitask`` user, as the guide assigns it; Redis is restarted mid-run, and the
books must balance afterwards: every task saved or dead-lettered once, nothing
outstanding, no error in Redis's log while it replayed its append-only file. Once
over plain TCP, once over TLS.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from helpers.paths import ROOT, SCRIPTS
from helpers.processes import Processes
from helpers.shipped_redis import ShippedRedis
from helpers.waits import wait_until

from mutitask_celery import codec, keys, settings
from mutitask_celery.settings import HEARTBEAT
from mutitask_celery.tools.localredis import free_port

pytestmark = pytest.mark.services  # runs the shipped redis.conf in a redis-server of its own

COUNT = 1000
PACE = "0.005"  # seconds a task takes: about 2 s of work per device, so the restart comes mid-run
DEAD_AFTER = "3"


def expected_failures(count: int) -> list[int]:
    """What the 'double' behaviour fails: None for multiples of 10, ValueError for multiples of 13."""
    return [n for n in range(count) if n % 10 == 0 or n % 13 == 0]


@pytest.fixture(params=["plain", "tls"])
def shipped(request: pytest.FixtureRequest, tmp_path: Path) -> ShippedRedis:
    if shutil.which("openssl") is None or shutil.which("redis-server") is None:
        pytest.skip("needs openssl and redis-server (scripts/setup.sh installs them)")
    server = ShippedRedis(tmp_path / "redis", free_port(), tls=request.param == "tls")
    server.start()
    yield server
    server.stop()


def test_a_run_through_the_shipped_redis_survives_a_restart(procs: Processes, shipped: ShippedRedis) -> None:
    env = {
        "MUTITASK_REDIS_URL": shipped.url("mutitask"),
        "MUTITASK_BROKER_URL": "",
        "MUTITASK_DEAD_AFTER": DEAD_AFTER,
        "PACE_SECONDS": PACE,
    }
    for n in (1, 2):
        procs.device(n, 1, "paced", env=env)
    server = procs.python(SCRIPTS / "server.py", str(COUNT), name="server", env=env)
    books = shipped.client()
    wait_until(lambda: books.llen(keys.results(1)) >= COUNT // 4, 120, "a quarter of the results")
    books.close()
    shipped.restart()  # mid-run: Redis replays its append-only file
    assert server.wait(300) == 0, procs.output(server)
    failures = expected_failures(COUNT)
    good = COUNT - len(failures)
    assert f"channel 1: published {COUNT}, succeeded {good}, failed {len(failures)}" in procs.output(server)
    books = shipped.client()
    saved = sorted(codec.decode(v) for v in books.lrange(keys.results(1), 0, -1))
    assert saved == sorted(2 * n for n in range(COUNT) if n not in set(failures))
    assert books.zcard(keys.dead_index(1)) == len(failures)
    assert books.hlen(keys.pending(1)) == 0
    stats = books.hgetall(keys.stats(1))
    assert (int(stats["published"]), int(stats["succeeded"]), int(stats["failed"])) == (COUNT, good, len(failures))
    log = shipped.log_text()
    assert "CRITICAL" not in log and "NOPERM" not in log, log[-3000:]


def test_the_shipped_users_work_as_the_guide_says(shipped: ShippedRedis) -> None:
    anonymous = redis.Redis.from_url(
        shipped.url("mutitask").replace(f"mutitask:{shipped.passwords['mutitask']}@", ""), socket_timeout=10
    )
    with pytest.raises(redis.AuthenticationError):  # NOAUTH: the default user stays off
        anonymous.ping()
    anonymous.close()
    admin = shipped.client("admin")
    assert admin.info("server")["redis_version"]
    assert admin.execute_command("ACL", "LOAD") in (True, "OK", b"OK")
    admin.close()  # Redis before 7.2 drops every client after ACL LOAD (redis/redis#11986): a new connection
    admin = shipped.client("admin")
    assert admin.bgrewriteaof()
    admin.close()
    user = shipped.client("mutitask")
    with pytest.raises(redis.ResponseError, match="no permissions"):
        user.flushall()  # -@dangerous
    user.close()
    out = subprocess.run(
        [sys.executable, "-m", "mutitask_celery", "failed", "count"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "MUTITASK_REDIS_URL": shipped.url(), "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert shipped.passwords["mutitask"] not in out.stdout + out.stderr


def test_the_guide_agrees_with_the_shipped_files() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    readme = (ROOT / "README.md").read_text()
    # The device env example works a channel that the guide's mytasks.py registers.
    block = re.search(r"```python\n# /opt/mutitask/app/mytasks.py\n(.*?)```", guide, re.S)
    assert block is not None
    registered = {int(n) for n in re.findall(r"register_channel\((\d+)", block.group(1))}
    queues = re.search(r"MUTITASK_QUEUES='([^']*)'", (ROOT / "deploy" / "device.env.example").read_text())
    assert queues is not None
    assert {int(q.removeprefix("channel")) for q in queues.group(1).split(",")} <= registered
    # Every shipped file has its install line; every unit's Documentation= is a file installed there.
    installs = [line for line in guide.splitlines() if re.match(r"\s*(install|cp) ", line)]
    for path in sorted((ROOT / "deploy").rglob("*")):
        if path.is_file():
            rel = path.relative_to(ROOT).as_posix()
            assert any(f" {rel} " in f"{line} " for line in installs), f"no install line for {rel}"
    for unit in (ROOT / "deploy" / "systemd").glob("*.service"):
        for doc in re.findall(r"^Documentation=file://(\S+)", unit.read_text(), re.M):
            assert any(line.split("#")[0].split()[-1] == doc for line in installs), f"{unit.name}: {doc}"
    # Wherever a Redis URL carries a password, it names the ACL user the shipped users.acl defines.
    texts = {"README.md": readme, "docs/deployment.md": guide}
    texts |= {p.relative_to(ROOT).as_posix(): p.read_text() for p in (ROOT / "deploy").rglob("*") if p.is_file()}
    for name, text in texts.items():
        for user in re.findall(r"rediss?://([^:@/\s'`\"]*):[^@/\s'`\"]+@", text):
            assert user == "mutitask", f"{name}: a Redis URL with user {user!r}"
    # One figure for how soon a dead device's tasks move: dead_after after its last heartbeat,
    # found by the next check (every heartbeat period).
    figure = f"within {int(settings.Settings().dead_after + HEARTBEAT)} s"
    for name in ("README.md", "docs/deployment.md"):
        assert figure in texts[name].lower(), f"{name} does not say {figure!r}"
        assert "within 10 s" not in texts[name].lower()
