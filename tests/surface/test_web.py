"""``mutitask web`` as a real process against a real redis-server and real devices:
the login on every path, the CSRF check on every change, ``/metrics`` parsed by
prometheus_client, task text shown as text, and the page in headless Chromium."""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from helpers.browser import FLAGS, Browser, chromium_binary
from helpers.paths import SCRIPTS, artifacts
from helpers.processes import Processes
from helpers.waits import device_is_up, wait_until
from prometheus_client.parser import text_string_to_metric_families

import mutitask_celery as mt
from mutitask_celery import codec, keys, runtime
from mutitask_celery.books import messages
from mutitask_celery.books.ledger import Outcome
from mutitask_celery.books.records import FailedTask
from mutitask_celery.errors import ConfigurationError, ExitCode
from mutitask_celery.serving import serve
from mutitask_celery.tools.localredis import free_port
from mutitask_celery.web import views
from mutitask_celery.web.app import WebConfig, check_listen

HOST = socket.gethostname()
USER, PASSWORD = "operator", "s3cret-web-password"
PATHS = [
    "/", "/dead", "/dead/record", "/static/common.js",
    "/api/token", "/api/overview", "/api/scaler", "/api/dead", "/metrics",
]  # fmt: skip
SCRIPT_TASK = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


@dataclass
class Web:
    """A running ``mutitask web`` and a logged-in session of it (cookies kept)."""

    url: str
    proc: subprocess.Popen[bytes]
    session: requests.Session

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=30, **kw)

    def token(self) -> str:
        token: str = self.get("/api/token").json()["token"]
        return token

    def post(self, path: str, body: Any, **kw: Any) -> requests.Response:
        headers = {"X-XSRFToken": self.token(), **kw.pop("headers", {})}
        return self.session.post(self.url + path, json=body, headers=headers, timeout=60, **kw)


def start_web(procs: Processes, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return procs.start([sys.executable, "-m", "mutitask_celery", "web", *args], "web", env=env)


@pytest.fixture
def web(procs: Processes, r: redis.Redis) -> Web:
    port = free_port()
    proc = start_web(procs, {"MUTITASK_WEB_USER": USER, "MUTITASK_WEB_PASSWORD": PASSWORD}, "--port", str(port))
    wait_until(lambda: "mutitask web: " in procs.output(proc) or proc.poll() is not None, 30, "mutitask web")
    assert proc.poll() is None, procs.output(proc)
    assert f"http://127.0.0.1:{port}/ (log in as {USER})" in procs.output(proc)
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    return Web(f"http://127.0.0.1:{port}", proc, session)


def failing_run(procs: Processes, tasks: list[str], tmp_path: Path) -> Path:
    """Run ``tasks`` on a 'flaky' device1 that fails them all until the returned file exists."""
    flag = tmp_path / "now-it-works"
    procs.device(1, 1, "flaky", env={"FLAKY_FLAG": str(flag)})
    summary = serve.serve(iter(tasks), channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    assert summary.failed == len(tasks)
    return flag


def test_without_a_password_only_a_loopback_address() -> None:
    check_listen(WebConfig(host="127.0.0.1"))
    check_listen(WebConfig(host="::1"))
    check_listen(WebConfig(host="0.0.0.0", password="x"))
    for host in ("0.0.0.0", "10.0.0.5", "::", "example.org"):
        with pytest.raises(ConfigurationError, match=f"refusing to serve the web page on {host} without a password"):
            check_listen(WebConfig(host=host))
    with pytest.raises(ConfigurationError, match="--port must be 1 to 65535"):
        check_listen(WebConfig(port=70000))
    assert "s3cret" not in repr(WebConfig(password="s3cret"))


def test_the_command_refuses_a_network_address_without_a_password(procs: Processes, r: redis.Redis) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUTITASK_WEB_")}
    proc = subprocess.run(
        [sys.executable, "-m", "mutitask_celery", "web", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2
    assert "refusing to serve the web page on 0.0.0.0 without a password: set MUTITASK_WEB_PASSWORD" in proc.stderr


def test_every_path_needs_the_login_and_a_wrong_one_says_nothing_more(web: Web, procs: Processes) -> None:
    refusals = []
    for path in PATHS:
        url = web.url + path
        assert web.get(path).status_code == 200, path
        for auth in (None, (USER, "wrong"), ("wrong", PASSWORD), ("", "")):
            reply = requests.get(url, auth=auth, timeout=30)
            assert reply.status_code == 401, (path, auth)
            assert reply.headers["WWW-Authenticate"].startswith("Basic realm=")
            refusals.append(reply.content)
        assert requests.get(url, headers={"Authorization": "Basic !!!"}, timeout=30).status_code == 401
    assert len(set(refusals)) == 1  # the same reply, whichever part was wrong
    assert PASSWORD not in procs.output(web.proc)


def test_changes_need_a_post_with_the_csrf_token_from_this_origin(web: Web, procs: Processes, tmp_path: Path) -> None:
    failing_run(procs, ["a", "b"], tmp_path)
    first = mt.failed(1)[0].id
    assert web.get("/api/dead/delete").status_code == 405  # no GET changes anything
    assert web.get("/api/devices/pause").status_code == 405
    bare = web.session.post(web.url + "/api/dead/delete", json={"ids": [first]}, timeout=30)
    assert bare.status_code == 403 and "_xsrf" in bare.json()["error"]
    stranger = requests.Session()  # a token, but not this session's cookie
    stranger.auth = (USER, PASSWORD)
    other = stranger.get(web.url + "/api/token", timeout=30).json()["token"]
    forged = web.session.post(web.url + "/api/dead/delete", json={"ids": [first]}, headers={"X-XSRFToken": other})
    assert forged.status_code == 403
    foreign = web.post("/api/dead/delete", {"ids": [first]}, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert mt.failed_count(1) == 2  # nothing was deleted by any of those
    assert web.post("/api/dead/delete", {"ids": [first]}).json() == {"action": "delete", "moved": 1}
    assert mt.failed_count(1) == 1
    for body, problem in (
        ({}, "say which"),
        ({"ids": "abc"}, "must be a list"),
        ({"channel": "1"}, "must be a channel number"),
        ({"channel": 0}, "positive integer"),
    ):
        reply = web.post("/api/dead/reload", body)
        assert reply.status_code == 400 and problem in reply.json()["error"], (body, reply.text)
    assert web.post("/api/devices/pause", {"devices": 3}).status_code == 400
    assert web.session.post(web.url + "/api/channels/cancel", json={"channel": 1}, timeout=30).status_code == 403
    for body, problem in (({"channel": "1"}, "must be a channel number"), ({"channel": 9}, "nothing to cancel")):
        reply = web.post("/api/channels/cancel", body)
        assert reply.status_code == 400 and problem in reply.json()["error"], (body, reply.text)
    assert web.get("/api/dead?limit=1000").status_code == 400 and web.get("/api/dead?offset=x").status_code == 400
    assert mt.failed_count(1) == 1  # bad input moved nothing


def test_the_api_pages_the_store_and_cuts_a_huge_task(web: Web, r: redis.Redis) -> None:
    store = runtime.store()
    huge = "x" * 1_000_000
    ids = [store.add_unpublishable(1, f"task {n}", "test") for n in range(7)]
    big = store.add_unpublishable(2, huge, "too big")
    page = web.get("/api/dead?channel=1&offset=2&limit=3").json()
    assert page["total"] == 7 and [rec["id"] for rec in page["records"]] == ids[2:5]
    assert page["channels"] == [1, 2]
    assert web.get("/api/dead").json()["total"] == 8
    (shown,) = web.get("/api/dead?channel=2").json()["records"]
    assert shown["data"]["cut"] and shown["data"]["size"] == 1_000_000 and len(shown["data"]["text"]) <= 300
    whole = web.get(f"/api/dead/record?id={big}").json()
    assert whole["data"]["size"] == 1_000_000 and len(whole["data"]["text"]) == 65_536
    assert web.get("/api/dead/record?id=nope").status_code == 404
    assert web.post("/api/dead/delete", {"channel": 1}).json()["moved"] == 7


def test_a_record_view_cuts_its_long_fields_and_keeps_the_others_whole() -> None:
    record = FailedTask("t1", 2, "x" * 500, "why " * 100, "Traceback ...", "device1@h", 1.5, 2.5, 3)
    view = views.record_view(record)
    assert list(view) == [f.name for f in FailedTask.FIELDS]
    assert view["data"] == {"text": "x" * 300, "size": 500, "cut": True}
    assert view["reason"]["cut"] and view["traceback"] == {"text": "Traceback ...", "size": 13, "cut": False}
    assert (view["id"], view["channel"], view["device"], view["failures"]) == ("t1", 2, "device1@h", 3)
    assert (view["first_failed"], view["last_failed"], view["result"]) == (1.5, 2.5, None)
    assert views.record_view(dataclasses.replace(record, result=[1]))["result"]["text"] == "[1]"


def test_metrics_in_prometheus_text(web: Web, procs: Processes, tmp_path: Path) -> None:
    failing_run(procs, ["a", "b", "c"], tmp_path)
    wait_until(device_is_up(f"device1@{HOST}"), 30, "device1")
    mt.set_rate_limit(1, 12.5)
    assert web.get("/api/overview").json()["channels"][0]["rate_limit"] == 12.5
    reply = web.get("/metrics")
    assert reply.headers["Content-Type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }
    ch = (("channel", "1"),)
    assert samples[("mutitask_published_total", ch)] == 3
    assert samples[("mutitask_succeeded_total", ch)] == 0
    assert samples[("mutitask_failed_total", ch)] == 3
    assert samples[("mutitask_run_twice_total", ch)] == 0
    assert samples[("mutitask_dead_letters", ch)] == 3
    assert samples[("mutitask_outstanding", ch)] == 0
    assert samples[("mutitask_channel_size", ch)] == 5
    assert samples[("mutitask_rate_limit_per_second", ch)] == 12.5
    device = f"device1@{HOST}"
    assert samples[("mutitask_device_state", (("device", device), ("state", "running")))] == 1
    assert samples[("mutitask_device_state", (("device", device), ("state", "offline")))] == 0
    assert samples[("mutitask_device_tasks_done_total", (("device", device),))] == 3
    assert not [name for name, _ in samples if not name.startswith("mutitask_")]


@pytest.fixture
def browser(procs: Processes, tmp_path: Path) -> Browser:
    chromium = chromium_binary()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium); the page's tests drive it")
    profile = tmp_path / "chromium-profile"
    proc = procs.start([chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"], "chromium")
    browser = Browser(profile, alive=lambda: proc.poll() is None)
    browser.authorize(USER, PASSWORD)
    return browser


def test_the_page_in_a_browser_sees_devices_and_reloads_a_failed_task(
    web: Web, browser: Browser, procs: Processes, tmp_path: Path
) -> None:
    flag = failing_run(procs, ["alpha", "beta", "gamma"], tmp_path)
    device = f"device1@{HOST}"
    browser.open(web.url + "/")
    row = f"#devices tr[data-device='{device}']"
    browser.wait_for(f"document.querySelector(\"{row} .state\")?.textContent === 'running'", "device1 running")
    browser.wait_for("document.querySelectorAll('#recent tbody tr[data-id]').length === 3", "3 dead letters")
    assert browser.js("document.querySelector(\"#channels tr[data-channel='1'] canvas\") !== null")
    browser.screenshot(artifacts(tmp_path) / "web-overview.png")

    browser.click(f"{row} button[data-action='pause']")
    browser.wait_for(f"document.querySelector(\"{row} .state\").textContent === 'paused'", "device1 paused")
    browser.click(f"{row} button[data-action='start']")
    browser.wait_for(f"document.querySelector(\"{row} .state\").textContent === 'running'", "device1 running again")

    flag.touch()  # from now on the device's task function succeeds
    beta = next(f.id for f in mt.failed(1) if f.data == "beta")
    browser.open(web.url + "/dead?channel=1")
    browser.wait_for(f"!!document.querySelector(\"tr[data-id='{beta}'] input\")", "beta's row")
    browser.click(f"tr[data-id='{beta}'] input")
    browser.click("#reload-selected")
    browser.click("#confirm button.yes")
    notice = browser.wait_for("(n => !n.hidden && n.textContent)(document.getElementById('notice'))", "the notice")
    assert notice == "reloaded 1 dead letter(s)"
    wait_until(lambda: mt.results(1) == ["beta"], 30, "beta to succeed")
    browser.open(web.url + "/")
    browser.wait_for(
        "document.querySelector(\"#channels tr[data-channel='1'] td.done\")?.textContent === '1'", "1 done on the page"
    )
    assert mt.failed_count(1) == 2


def test_task_text_is_shown_as_text_in_a_browser(web: Web, browser: Browser, r: redis.Redis) -> None:
    store = runtime.store()
    script = store.add_unpublishable(1, SCRIPT_TASK, "reason <b>bold</b>")
    huge = store.add_unpublishable(1, "y" * 1_000_000, "too big")
    for path in ("/", "/dead", f"/dead/record?id={script}"):
        browser.open(web.url + path)
        browser.wait_for(f"document.body.textContent.includes({SCRIPT_TASK!r})", f"the task as text on {path}")
        assert browser.js("document.title").startswith("mutitask")
        assert browser.js("document.querySelectorAll('main img, main script, main b').length") == 0
    browser.open(web.url + "/dead")
    listed = "[...document.querySelectorAll('#records thead th[data-field]')].map(th => th.dataset.field)"
    assert browser.js(listed) == [f.name for f in FailedTask.FIELDS if f.listed]  # the page lays out the fields
    browser.open(web.url + f"/dead/record?id={huge}")
    browser.wait_for("document.getElementById('data').textContent.includes('1.0 MB in all')", "the cut huge task")
    assert browser.js("document.querySelector(\"dd[data-field='device']\").textContent") == "server"
    assert browser.js("document.querySelector(\"dd[data-field='data']\").textContent") == "1.0 MB"
    assert browser.js("document.getElementById('data').textContent.length") < 70_000


def test_the_page_cancels_a_channel_after_asking(web: Web, browser: Browser, procs: Processes) -> None:
    """The channel's Cancel button asks first; then the run ends cancelled (exit code 9)."""
    env = {"SLOW_SECONDS": "0.5"}
    procs.device(1, 1, "slow", env=env)
    server = procs.python(SCRIPTS / "server.py", "120", "5", name="server", env=env)  # a minute of work
    browser.open(web.url + "/")
    button = "#channels tr[data-channel='1'] button[data-cancel]"
    browser.wait_for(f'!!document.querySelector("{button}")', "channel 1's Cancel button")
    browser.click(button)
    assert browser.js("document.getElementById('confirm').textContent").startswith("Cancel channel 1's run?")
    browser.click("#confirm button.yes")
    notice = browser.wait_for("(n => !n.hidden && n.textContent)(document.getElementById('notice'))", "the notice")
    assert notice.startswith("channel 1 cancelled:"), notice
    assert runtime.ledger().stats(1).cancelled > 0
    assert server.wait(60) == ExitCode.CANCELLED, procs.output(server)


def fail_tasks(channel: int, values: list[str], reason: str, device: str) -> list[str]:
    """Record ``values`` as failed on ``device`` for ``reason``, as a device's finish step does."""
    items = [(messages.new_task_id(), codec.encode(v)) for v in values]
    runtime.ledger().publish(channel, items)
    runtime.ledger().client.delete(keys.queue(channel))
    runtime.ledger().finish(channel, device, [Outcome(i, ok=False, reason=reason) for i, _ in items])
    return [i for i, _ in items]


def test_the_api_filters_the_store_and_acts_on_what_a_filter_names(web: Web, r: redis.Redis) -> None:
    down = fail_tasks(1, [f"GET https://example.com/{n}" for n in range(4)], "ConnectionError: down", "device2@h")
    bugs = fail_tasks(1, ["GET https://other.org/"], "ValueError: a real bug", "device1@h")
    page = web.get("/api/dead?reason=ConnectionError*&device=device2&since=1h&limit=3").json()
    assert page["total"] == 4 and [rec["id"] for rec in page["records"]] == down[:3]
    assert page["filter"]["reason"] == "ConnectionError*" and page["filter"]["device"] == "device2"
    assert [rec["id"] for rec in web.get("/api/dead?text=other.org").json()["records"]] == bugs
    assert web.get("/api/dead?reason=&device=").json()["total"] == 5  # an empty field is no filter
    body = {"reason": "ConnectionError*", "device": "device2"}
    dry = web.post("/api/dead/reload", {**body, "dry_run": True}).json()
    assert dry == {"action": "reload", "dry_run": True, "matching": 4} and mt.failed_count() == 5
    assert web.post("/api/dead/reload", body).json() == {"action": "reload", "moved": 4}
    assert [f.id for f in mt.failed(limit=None)] == bugs and runtime.ledger().outstanding(1) == 4
    for bad, problem in (
        ({"since": "yesterday"}, "since: cannot read 'yesterday'"),
        ({"reason": 3}, '"reason" must be a text'),
        ({"device": "device1", "dry_run": "yes"}, '"dry_run" and "all" must be true or false'),
        ({"since": "1m", "until": "2h"}, "since is after until"),
    ):
        reply = web.post("/api/dead/delete", bad)
        assert reply.status_code == 400 and problem in reply.json()["error"], (bad, reply.text)
    assert web.get("/api/dead?until=soon").status_code == 400
    assert mt.failed_count() == 1  # bad input moved nothing
    assert web.post("/api/dead/delete", {"all": True, "dry_run": True}).json()["matching"] == 1
    assert web.post("/api/dead/delete", {"text": "other.org"}).json()["moved"] == 1


def test_the_page_filters_reloads_these_n_and_searches_in_a_browser(
    web: Web, browser: Browser, r: redis.Redis, tmp_path: Path
) -> None:
    down = fail_tasks(1, [f"GET https://example.com/{n}" for n in range(12)], "ConnectionError: down", "device2@h")
    bugs = fail_tasks(2, ["GET https://other.org/"], "ValueError: a real bug", "device1@h")
    browser.open(web.url + "/dead")
    browser.wait_for("document.querySelectorAll('#records tbody tr[data-id]').length === 13", "every record")
    assert browser.js("document.getElementById('reload-matching').disabled")  # nothing chosen: no "these N"
    browser.js("document.getElementById('reason').value = 'ConnectionError*'")
    browser.js("document.getElementById('device').value = 'device2'")
    browser.click("#search")
    browser.wait_for("document.getElementById('reload-matching').textContent === 'Reload these 12'", "reload these 12")
    rows = browser.js("[...document.querySelectorAll('#records tbody tr[data-id]')].map(tr => tr.dataset.id)")
    assert rows == down and "reason=ConnectionError" in browser.js("location.search")
    browser.screenshot(artifacts(tmp_path) / "web-dead-filtered.png")
    browser.click("#reload-matching")
    question = browser.wait_for("(c => !c.hidden && c.textContent)(document.getElementById('confirm'))", "the question")
    assert question.startswith("Reload these 12 dead letter(s)?")  # the count the server found
    assert mt.failed_count() == 13  # asked, not yet moved
    browser.click("#confirm button.yes")
    notice = browser.wait_for("(n => !n.hidden && n.textContent)(document.getElementById('notice'))", "the notice")
    assert notice == "reloaded 12 dead letter(s)"
    assert [f.id for f in mt.failed(limit=None)] == bugs and runtime.ledger().outstanding(1) == 12
    browser.wait_for("document.getElementById('total').textContent === '(0 matching)'", "the list read again")

    browser.click("#clear")
    browser.wait_for("document.querySelectorAll('#records tbody tr[data-id]').length === 1", "the one left")
    browser.js("document.getElementById('text').value = 'other.org'")
    browser.click("#search")
    browser.wait_for(f"!!document.querySelector(\"tr[data-id='{bugs[0]}'] a\")", "the search's result")
    browser.click(f"tr[data-id='{bugs[0]}'] a")
    browser.wait_for(
        "document.querySelector(\"pre[data-field='data']\")?.textContent === 'GET https://other.org/'", "its record"
    )
    assert browser.js("document.querySelector(\"dd[data-field='reason']\").textContent") == "ValueError: a real bug"
    assert browser.js("location.pathname") == "/dead/record"
