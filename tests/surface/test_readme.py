"""Every command and code sample in the README runs, as written, against real parts.

Each fenced block of README.md is known here by its first line; a block this
file does not know fails :func:`test_every_readme_block_is_run`, so a new
sample cannot go untested. Python samples run as scripts in their own
processes (never ``exec``), shell lines run in ``bash`` with the virtual
environment first on PATH.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
from helpers.paths import ROOT, SCRIPTS
from helpers.processes import Processes
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import codec, runtime, settings
from mutitask_celery.books import messages
from mutitask_celery.tools.localredis import free_port

pytestmark = pytest.mark.services  # the README's commands start servers, devices and benchmarks

README = ROOT / "README.md"
VENV_BIN = str(Path(sys.executable).parent)
HOST = socket.gethostname()
D1 = f"device1@{HOST}"


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block in the README."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", README.read_text(), re.S | re.M)]


def block(first_line: str) -> str:
    found = [text for _, text in blocks() if text.splitlines()[0].strip() == first_line]
    assert len(found) == 1, f"README: expected one block starting {first_line!r}, found {len(found)}"
    return found[0]


def commands(first_line: str) -> list[str]:
    """The command lines of a shell block, comments stripped."""
    return [line.split("  #")[0].strip() for line in block(first_line).splitlines() if line.strip()]


def shell_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": VENV_BIN + os.pathsep + os.environ["PATH"],
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(SCRIPTS)]),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def sh(line: str, cwd: Path = ROOT, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", line],
        cwd=str(cwd),
        env=shell_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def script(tmp_path: Path, first_line: str) -> Path:
    path = tmp_path / (first_line.lstrip("# ").split()[0] if first_line.endswith(".py") else "sample.py")
    path.write_text(block(first_line))
    return path


WEB_BLOCK = 'MUTITASK_WEB_PASSWORD="$(openssl rand -hex 16)" mutitask web --host 0.0.0.0   # every address: a login'
CURL_BLOCK = 'curl -s -c jar -u admin:"$MUTITASK_WEB_PASSWORD" http://127.0.0.1:5566/api/token   # {"token": "..."}'
RATE_BLOCK = "mutitask rate 1 20        # at most 20 tasks of channel 1 start each second, all devices together"
TRACED_BLOCK = "# traced_server.py: the server.py above, its run traced (each span printed as a line of JSON)"
CANCEL_BLOCK = "mutitask cancel 2            # channel 2's run"
KNOWN = {
    "bash scripts/demo.sh    # a server and three devices working a real job here; needs no Redis installed",
    "# server.py",
    "# device.py (start as many as you like, each with its own deviceID)",
    "# mytasks.py",
    "celery -A mutitask_celery worker -Q channel1 -n device1@%h -I mytasks --pool threads --concurrency 4",
    "# status and control",
    "mutitask status",
    'celery -A mutitask_celery flower --basic-auth=admin:"$FLOWER_PASSWORD"',
    "# the dead-letter store",
    "mutitask failed count",
    "python bench/throughput.py --runs 3",
    WEB_BLOCK,
    CURL_BLOCK,
    RATE_BLOCK,
    TRACED_BLOCK,
    CANCEL_BLOCK,
}


def test_every_readme_block_is_run() -> None:
    firsts = {text.splitlines()[0].strip() for _, text in blocks()}
    assert firsts == KNOWN, f"untested README blocks: {firsts - KNOWN}; gone: {KNOWN - firsts}"


def test_the_configuration_table_is_the_settings_table() -> None:
    text = README.read_text()
    for row in settings.markdown_rows():
        assert row in text, f"README's configuration table lacks or misstates: {row}"
    assert text.count("| `MUTITASK_") == len(settings.SETTINGS)


def test_the_two_commands(tmp_path: Path) -> None:
    demo, tests = commands(
        "bash scripts/demo.sh    # a server and three devices working a real job here; needs no Redis installed"
    )
    assert (demo, tests) == ("bash scripts/demo.sh", "bash scripts/test.sh")
    done = sh(demo, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every task succeeded in the end" in done.stdout
    # The test command itself is what CI runs (it would run this very test): here it
    # sets up and collects, and .ci/run is checked to call it.
    collected = sh(f"{tests} --collect-only -q -p no:cacheprovider", timeout=900)
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert "test_the_two_commands" in collected.stdout
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_the_legacy_scripts_run_unchanged(procs: Processes, r: redis.Redis, tmp_path: Path) -> None:
    device = procs.python(
        script(tmp_path, "# device.py (start as many as you like, each with its own deviceID)"), name="readme-device"
    )
    wait_until(device_is_up(D1), 30, "the README's device")
    server = procs.python(script(tmp_path, "# server.py"), name="readme-server")
    assert server.wait(120) == 0, procs.output(server)
    assert mt.results_count(1) == 200
    assert "HTTP://127.0.0.1:8000/FREE/INHA/1/" in mt.results(1)
    assert device.poll() is None  # a device works until it is stopped


def test_the_celery_way(procs: Processes, r: redis.Redis, tmp_path: Path) -> None:
    script(tmp_path, "# mytasks.py")
    (line,) = commands(
        "celery -A mutitask_celery worker -Q channel1 -n device1@%h -I mytasks --pool threads --concurrency 4"
    )
    procs.start(
        ["bash", "-c", f"exec {line}"],
        "readme-celery-worker",
        cwd=tmp_path,
        env={"PATH": shell_env()["PATH"], "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])},
    )
    wait_until(device_is_up(D1), 60, "the README's celery worker")
    runtime.ledger().publish(1, [(messages.new_task_id(), codec.encode(w)) for w in ("a", "bb", "ccc")])
    wait_until(lambda: mt.results_count(1) == 3, 30, "three results")
    assert sorted(mt.results(1)) == [1, 2, 3]


def test_a_traced_run(procs: Processes, r: redis.Redis, tmp_path: Path) -> None:
    procs.device(1, 1, "echo")
    wait_until(device_is_up(D1), 30, "device1")
    server = procs.python(script(tmp_path, TRACED_BLOCK), name="readme-traced-server")
    assert server.wait(120) == 0, procs.output(server)
    printed = [json.loads(line) for line in procs.output(server).splitlines() if line.startswith("{")]
    (run,) = [span for span in printed if span["name"] == "mutitask.server.run"]
    assert run["attributes"]["mutitask.published"] == run["attributes"]["mutitask.succeeded"] == 200
    assert run["resource"]["attributes"]["service.name"] == "mutitask-server"


def test_status_and_control(procs: Processes, r: redis.Redis, tmp_path: Path) -> None:
    procs.device(1, 1)
    wait_until(device_is_up(D1), 30, "device1")
    sample = subprocess.run(
        [sys.executable, str(script(tmp_path, "# status and control"))],
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sample.returncode == 0, sample.stderr
    assert f"{D1} running [1]" in sample.stdout
    assert mt.devices()[0].state.value == "running"  # paused, then started again
    for line in commands("mutitask status"):
        done = sh(line, timeout=60)
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        assert D1 in done.stdout
    assert json.loads(sh("mutitask status --json").stdout)["devices"][0]["state"] == "running"


def test_flower(procs: Processes, r: redis.Redis) -> None:
    (line,) = commands('celery -A mutitask_celery flower --basic-auth=admin:"$FLOWER_PASSWORD"')
    port = free_port()
    password = base64.b16encode(os.urandom(8)).decode()
    procs.start(
        ["bash", "-c", f"exec {line}"],
        "readme-flower",
        env={
            "PATH": shell_env()["PATH"],
            "FLOWER_PASSWORD": password,
            "FLOWER_PORT": str(port),
            "FLOWER_ADDRESS": "127.0.0.1",
        },
    )
    auth = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()

    def page(path: str, authorization: str | None = auth) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
        if authorization:
            request.add_header("Authorization", authorization)
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    wait_until(lambda: page("/workers") == 200, 60, "Flower's workers page")
    assert page("/api/workers", authorization=None) == 401  # the password is asked for


def fill_dead_letters(procs: Processes) -> None:
    procs.device(1, 1)  # 'double': None for multiples of 10, ValueError for multiples of 13
    wait_until(device_is_up(D1), 30, "device1")
    server = procs.python(SCRIPTS / "server.py", "30", name="server")
    assert server.wait(60) == 0
    procs.stop_all()  # reloaded tasks stay on the queue
    assert mt.failed_count(1) == 5


def test_the_dead_letter_store(procs: Processes, r: redis.Redis, tmp_path: Path) -> None:
    fill_dead_letters(procs)
    sample = subprocess.run(
        [sys.executable, str(script(tmp_path, "# the dead-letter store"))],
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sample.returncode == 0, sample.stderr
    assert "returned None" in sample.stdout and "ValueError: unlucky 13" in sample.stdout
    lines = sample.stdout.splitlines()
    assert "2 4" in lines and "2" in lines and "['13']" in lines, (
        sample.stdout
    )  # 13 and 26 are ValueErrors; 0 went back
    assert mt.failed_count(1) == 0 and runtime.ledger().outstanding(1) == 5  # all back on the channel


def test_the_dead_letter_commands(procs: Processes, r: redis.Redis) -> None:
    fill_dead_letters(procs)
    outputs = {}
    for line in commands("mutitask failed count"):
        done = sh(line, timeout=60)
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        outputs[line] = done.stdout
    assert "total: 5" in outputs["mutitask failed count"]
    assert len(json.loads(outputs["mutitask failed list --json"])) == 5
    valueerrors = outputs["mutitask failed list --reason 'ValueError*' --since 10m"]
    assert "unlucky 13" in valueerrors and "unlucky 26" in valueerrors and "returned None" not in valueerrors
    assert json.loads(outputs["mutitask failed count --device device1 --json"])["total"] == 5
    assert "unlucky 13" in outputs["mutitask failed find 13"] and "None" not in outputs["mutitask failed find 13"]
    assert (
        outputs["mutitask failed reload --reason 'returned None' --dry-run"].strip() == "would reload 3 failed task(s)"
    )
    assert "deleted 0 failed task(s)" in outputs["mutitask failed delete --device device2 --until 2026-12-04T10:00"]
    assert "reloaded 5 failed task(s)" in outputs["mutitask failed reload --channel 1"]
    assert mt.failed_count(1) == 0


@pytest.mark.parametrize("line", commands("python bench/throughput.py --runs 3"))
def test_the_benchmark_commands(line: str, tmp_path: Path) -> None:
    words = shlex.split(line)
    if "--chart" in words:  # the README's chart is not redrawn with --quick's figures
        words[words.index("--chart") + 1] = str(tmp_path / "chart.png")
    extra = ["--quick"] + (["--chart", str(tmp_path / "chart.png")] if "throughput" in line else [])
    done = subprocess.run(
        [sys.executable, *words[1:], *extra],
        cwd=str(ROOT),
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip(), "a benchmark prints its figures"


def _web_answers(port: int, proc: subprocess.Popen[bytes], procs: Processes) -> int:
    """The status of GET /api/overview without a login, once the page listens."""

    def status() -> int | None:
        assert proc.poll() is None, procs.output(proc)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/overview", timeout=10) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    found: int = wait_until(status, 30, f"the web page on port {port}")
    return found


def test_the_web_page_commands(procs: Processes, r: redis.Redis, tmp_path: Path) -> None:
    """The web block's lines on free ports (``--port``); ``mutitask demo --web`` is test_demo.py's."""
    anywhere, here, demo = commands(WEB_BLOCK)
    assert demo == "mutitask demo --web"
    port = free_port()
    guarded = procs.start(["bash", "-c", f"{anywhere} --port {port}"], "readme-web-anywhere", env=shell_env())
    assert _web_answers(port, guarded, procs) == 401  # a generated password nobody was told: nobody gets in
    assert "(log in as admin)" in procs.output(guarded)
    port = free_port()
    env = {k: v for k, v in shell_env().items() if k != "MUTITASK_WEB_PASSWORD"}
    local = procs.start(["bash", "-c", f"exec {here} --port {port}"], "readme-web-here", env=env)
    assert _web_answers(port, local, procs) == 200 and "no password: this machine only" in procs.output(local)

    runtime.store().add_unpublishable(1, "a task", "for the README")
    password = base64.b16encode(os.urandom(8)).decode()
    port = free_port()
    web = procs.start(
        ["mutitask", "web", "--port", str(port)], "readme-web-curl", env=shell_env(MUTITASK_WEB_PASSWORD=password)
    )
    assert _web_answers(port, web, procs) == 401
    token_line, reload_line = block(CURL_BLOCK).replace("\\\n", " ").replace("5566", str(port)).splitlines()
    got = sh(token_line.split("  #")[0], cwd=tmp_path, MUTITASK_WEB_PASSWORD=password)
    assert got.returncode == 0, got.stderr
    token = json.loads(got.stdout)["token"]
    moved = sh(reload_line, cwd=tmp_path, MUTITASK_WEB_PASSWORD=password, TOKEN=token)
    assert moved.returncode == 0 and json.loads(moved.stdout) == {"action": "reload", "moved": 1}, moved.stdout
    assert mt.failed_count(1) == 0 and password not in procs.output(web)


def test_the_rate_limit_commands(r: redis.Redis) -> None:
    limit, off = commands(RATE_BLOCK)
    done = sh(limit, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "rate limits: channel 1 20/s", done.stderr
    assert mt.rate_limits() == {1: 20.0}
    assert "rate limits: channel 1 20/s" in sh("mutitask status", timeout=60).stdout
    done = sh(off, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "rate limits: none" and mt.rate_limits() == {}


def test_the_cancel_commands(procs: Processes, r: redis.Redis) -> None:
    """The README's cancel lines on a run of two channels: channel 2's, then every one left."""
    env = {"SLOW_SECONDS": "0.2"}
    for channel in (1, 2):
        procs.device(channel, channel, "slow", env=env)
        wait_until(device_is_up(f"device{channel}@{socket.gethostname()}"), 60, f"device{channel}")
    server = procs.python(SCRIPTS / "server.py", "200", "10", "2", name="server", env=env)  # 40 s a channel
    wait_until(lambda: mt.results_count(1) >= 5 and mt.results_count(2) >= 5, 60, "both channels under way")
    first, second = commands(CANCEL_BLOCK)
    done = sh(first, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("channel 2: cancelled;"), (done.stdout, done.stderr)
    done = sh(second, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("channel 1: cancelled;"), (done.stdout, done.stderr)
    assert server.wait(120) == 9, procs.output(server)  # the run ended cancelled
    assert runtime.ledger().stats(1).cancelled > 0 and runtime.ledger().stats(2).cancelled > 0
