"""The deployment as shipped: ``deploy/redis/*`` on the Redis users have, restarted mid-run.

``tests/helpers/shipped_redis.py`` starts ``redis-server`` from the shipped config
and ACL file (only address, port, paths and passwords adapted). A job runs through
the ``mutitask`` user, as the guide assigns it; Redis is restarted mid-run, and the
books must balance afterwards: every task saved or dead-lettered once, nothing
outstanding, no error in Redis's log while it replayed its append-only file. Once
over plain TCP, once over TLS.

``deploy/redis/sentinel/*`` is read (one master, quorum 2, the guide's users) and run:
``tests/helpers/shipped_sentinel.py`` starts its six files on one machine (adapted as
above), and a killed master must be replaced under the shipped users and timeouts.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from helpers.paths import ROOT, SCRIPTS
from helpers.processes import Processes
from helpers.sentinels import master_of, report, sentinel_of
from helpers.shipped_redis import ShippedRedis
from helpers.shipped_sentinel import DATA_FILES as SENTINEL_DATA_FILES
from helpers.shipped_sentinel import SENTINEL_FILES, ShippedSentinelGroup
from helpers.shipped_sentinel import SHIPPED as SHIPPED_SENTINEL
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


def _directives(path: Path) -> list[list[str]]:
    """A Redis or Sentinel config file's lines, split as Redis splits them (comments left out)."""
    return [shlex.split(line) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _acl_users(path: Path) -> dict[str, str]:
    """An ACL file's users, each with its whole line."""
    return {line.split()[1]: line for line in path.read_text().splitlines() if line.startswith("user ")}


def test_the_sentinel_configs_watch_one_master_with_quorum_two() -> None:
    data = {name: _directives(SHIPPED_SENTINEL / name) for name in SENTINEL_DATA_FILES}
    sentinels = {name: _directives(SHIPPED_SENTINEL / name) for name in SENTINEL_FILES}
    master = data["redis-master.conf"]
    host = next(d[1] for d in master if d[0] == "bind")
    # Every sentinel watches the same master, where the master's file puts it, with quorum 2.
    for name, lines in sentinels.items():
        monitors = [d for d in lines if d[:2] == ["sentinel", "monitor"]]
        assert monitors == [["sentinel", "monitor", "mymaster", host, "6379", "2"]], name
    # Each sentinel sits beside a data node (its host), and they differ in nothing else.
    binds = [next(d for d in lines if d[0] == "bind") for lines in sentinels.values()]
    assert binds == [next(d for d in lines if d[0] == "bind") for lines in data.values()]
    settings = [[d for d in lines if d[0] != "bind"] for lines in sentinels.values()]
    assert settings[0] == settings[1] == settings[2]
    assert ["sentinel", "auth-user", "mymaster", "sentinel"] in settings[0]
    # Every data node persists, never evicts, takes writes only with a replica in sync,
    # and replicates as the replica user; the replicas start under the master.
    for name, lines in data.items():
        for needed in (
            ["appendonly", "yes"],
            ["appendfsync", "everysec"],
            ["maxmemory-policy", "noeviction"],
            ["min-replicas-to-write", "1"],
            ["min-replicas-max-lag", "10"],
            ["aclfile", "/etc/redis/users.acl"],
            ["masteruser", "replica"],
            ["port", "6379"],
        ):
            assert needed in lines, f"{name}: {' '.join(needed)}"
        replicaof = [d for d in lines if d[0] == "replicaof"]
        assert replicaof == ([] if lines is master else [["replicaof", host, "6379"]]), name
    # Every password is a placeholder.
    for name in (*SENTINEL_DATA_FILES, *SENTINEL_FILES, "users.acl"):
        text = (SHIPPED_SENTINEL / name).read_text()
        for secret in re.findall(r"(?:requirepass|masterauth|auth-pass \S+)\s+(\S+)|>(\S+)", text):
            assert "".join(secret).startswith("CHANGE-ME-"), f"{name}: {secret}"


def test_the_sentinel_users_are_the_guides_and_two_for_sentinel() -> None:
    single = _acl_users(ROOT / "deploy" / "redis" / "users.acl")
    under_sentinel = _acl_users(SHIPPED_SENTINEL / "users.acl")
    assert {user: under_sentinel[user] for user in single} == single  # default, mutitask, admin as for one Redis
    assert set(under_sentinel) - set(single) == {"replica", "sentinel"}
    guide = (ROOT / "docs" / "deployment.md").read_text()
    for line in under_sentinel.values():
        assert line in guide, f"docs/deployment.md does not show {line!r}"


def test_the_shipped_sentinel_configs_fail_over_under_their_own_users_twice_in_a_row(tmp_path: Path) -> None:
    """The replicas replicate as the replica user, the sentinels watch, elect and reconfigure
    as the sentinel user (a missing permission shows as no failover, or NOPERM in a log),
    and the package's user finds the new master through the sentinels. The new master fails
    over too, well within twice the failover-timeout of the first failover: only an
    attempt that did not complete waits that long."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server (scripts/setup.sh installs it)")
    group = ShippedSentinelGroup(tmp_path / "sentinel")
    try:
        group.start()
        mutitask = {"username": "mutitask", "password": group.passwords["mutitask"]}
        with sentinel_of(group, **mutitask) as sentinel:
            with master_of(sentinel, "mymaster") as master:
                master.set("before", "1")
                assert master.execute_command("WAIT", 2, 5000) == 2
            first_fault = time.monotonic()
            first = group.kill_master()
            second = group.wait_promoted(first, first_fault + 60)
            report("promotion after SIGKILL of the master, shipped configs (down-after 5 s)", first_fault)
            assert sentinel.discover_master("mymaster") == second
            with master_of(sentinel, "mymaster") as master:
                assert master.get("before") == "1"
                master.set("after", "2")  # min-replicas-to-write: the other replica follows the new master
            other = next(port for port in group.data_ports if port not in (first.port, second.port))
            assert group.wait_replica(other, time.monotonic() + 30) == second
            assert f"replicaof {second.host} {second.port}" in group.node(other).conf.read_text()  # CONFIG REWRITE

            group.restart_node(first.port)
            assert group.wait_replica(first.port, time.monotonic() + 60) == second
            started = time.monotonic()
            shipped = _directives(SHIPPED_SENTINEL / SENTINEL_FILES[0])
            timeout_ms = next(int(d[3]) for d in shipped if d[:2] == ["sentinel", "failover-timeout"])
            window = 2 * timeout_ms / 1000  # seconds: Sentinel retries an incomplete attempt only after this
            assert started - first_fault < window, "too slow to show a second failover inside the window"
            assert group.kill_master() == second
            third = group.wait_promoted(second, started + 60)
            report(f"promotion after SIGKILL of the next master, {started - first_fault:.0f} s after the 1st", started)
            with master_of(sentinel, "mymaster") as master:
                assert sentinel.discover_master("mymaster") == third
                assert master.get("after") == "2"
    finally:
        group.stop()
    logs = group.logs(tail=100_000)
    assert "NOPERM" not in logs and "-failover-abort" not in logs, logs[-4000:]
