"""``mutitask web``: the operator's page, its JSON API and ``/metrics``, on tornado.

Safety, in the order a request meets it:

- **Login**: with ``MUTITASK_WEB_PASSWORD`` set, every path (pages, scripts, API,
  ``/metrics``) needs HTTP basic auth as ``MUTITASK_WEB_USER`` (default ``admin``);
  a wrong user and a wrong password get the same 401. Without a password the page
  listens on a loopback address only (:func:`check_listen`).
- **No GET changes anything**: actions are POSTs, each with the CSRF token of the
  ``_xsrf`` cookie in an ``X-XSRFToken`` header (tornado's ``xsrf_cookies``), and an
  ``Origin``, when the browser sends one, that is this page's own.
- **Nothing runs from data**: the page's scripts put task data, reasons and tracebacks
  in the document as text, and the Content-Security-Policy allows no inline script, so
  a task ``<script>...`` stays characters even if a page were to get that wrong.

The Redis and Celery calls block, so they run on one worker thread, in order; the
loop only serves. A sampler reads the books every :data:`SAMPLE_EVERY` seconds for
the rate plots. ``GET /api/scaler`` has a thread of its own: it only reads Redis, and
an autoscaler's poll must not wait behind an overview that waits for devices to answer.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit

import tornado.httpserver
import tornado.ioloop
import tornado.web

from mutitask_celery.errors import ConfigurationError, MutitaskError, RecordNotFound
from mutitask_celery.web import metrics, scaler, views

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5566
DEFAULT_USER = "admin"
SAMPLE_EVERY = 2.0  # seconds between rate samples (the page refreshes as often)
MAX_BODY = 1_000_000  # bytes an action's JSON body may have (a list of ids)
T = TypeVar("T")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class WebConfig:
    """Where the page listens and who may open it. ``password`` never shows in a repr."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    user: str = DEFAULT_USER
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_environ(cls, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> WebConfig:
        """``MUTITASK_WEB_USER`` / ``MUTITASK_WEB_PASSWORD`` (an empty password is none)."""
        return cls(
            host=host,
            port=port,
            user=os.environ.get("MUTITASK_WEB_USER") or DEFAULT_USER,
            password=os.environ.get("MUTITASK_WEB_PASSWORD") or None,
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(config: WebConfig) -> None:
    """Refuse a page anyone on the network could open without a password."""
    if not 0 < config.port < 65536:
        raise ConfigurationError(f"--port must be 1 to 65535, got {config.port}")
    if config.password is None and not is_loopback(config.host):
        raise ConfigurationError(
            f"refusing to serve the web page on {config.host} without a password: set MUTITASK_WEB_PASSWORD "
            f"(and MUTITASK_WEB_USER, default {DEFAULT_USER}), or listen on 127.0.0.1"
        )


class Base(tornado.web.RequestHandler):
    """Login first, then the CSRF check (tornado runs it before ``prepare``), then the handler."""

    _logged_in = False

    @property
    def config(self) -> WebConfig:
        config: WebConfig = self.application.settings["mutitask_config"]
        return config

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    def login(self) -> None:
        if self._logged_in or self.config.password is None:
            self._logged_in = True
            return
        if not self._credentials_match(self.request.headers.get("Authorization", "")):
            raise tornado.web.HTTPError(401, reason="Unauthorized")
        self._logged_in = True

    def _credentials_match(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        assert self.config.password is not None
        # Both compared, always: the time taken says nothing of which part was wrong.
        user_ok = hmac.compare_digest(user.encode(), self.config.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self.config.password.encode())
        return bool(sep) and user_ok and password_ok

    def check_xsrf_cookie(self) -> None:
        self.login()
        origin = self.request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.request.host:
            raise tornado.web.HTTPError(403, reason="cross-origin request")
        super().check_xsrf_cookie()

    def prepare(self) -> None:
        self.login()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors as JSON with a reason, never a traceback (it could hold task data)."""
        if status_code == 401:  # set here: tornado clears the headers before an error
            self.set_header("WWW-Authenticate", 'Basic realm="mutitask", charset="UTF-8"')
        self.set_header("Content-Type", "application/json; charset=utf-8")
        error = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason
        if isinstance(error, tornado.web.HTTPError) and error.log_message:  # tornado's own: "'_xsrf' ... missing"
            message = f"{message}: {error.log_message % error.args if error.args else error.log_message}"
        self.finish(json.dumps({"error": message}))

    async def blocking(self, fn: Callable[..., T], *args: Any, pool: str = "mutitask_pool") -> T:
        """``fn(*args)`` on the Redis/Celery worker thread (or the thread the setting ``pool`` names)."""
        executor: ThreadPoolExecutor = self.application.settings[pool]
        return await tornado.ioloop.IOLoop.current().run_in_executor(executor, fn, *args)

    def send_json(self, value: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(value))

    def json_body(self) -> dict[str, Any]:
        if len(self.request.body) > MAX_BODY:
            raise tornado.web.HTTPError(413, reason=f"a body of at most {MAX_BODY} bytes")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise tornado.web.HTTPError(400, reason="the body must be JSON") from None
        if not isinstance(body, dict):
            raise tornado.web.HTTPError(400, reason="the body must be a JSON object")
        return body

    async def act(self, fn: Callable[[str, dict[str, Any]], dict[str, Any]], action: str) -> None:
        body = self.json_body()
        try:
            result = await self.blocking(fn, action, body)
        except ConfigurationError as exc:
            raise tornado.web.HTTPError(400, reason=str(exc)) from None
        log.info("web: %s %s -> %s", self.request.path, _summary(body), result)
        self.send_json(result)


def _summary(body: dict[str, Any]) -> str:
    """What an action asked for, for the log, without any task data (ids, a channel, devices, a
    filter's clauses but a task's text)."""
    ids = body.get("ids")
    if isinstance(ids, list):
        return f"{len(ids)} id(s)"
    said = ("channel", "devices", "all", "dry_run", "reason", "device", "since", "until")
    return json.dumps({k: body[k] for k in said if k in body} | ({"text": "..."} if "text" in body else {}))[:200]


class Page(Base):
    """One of the HTML pages under ``pages/``; sets the CSRF cookie its script sends back."""

    def initialize(self, name: str, current: str) -> None:
        self.name, self.current = name, current

    def get(self) -> None:
        _ = self.xsrf_token  # sets the _xsrf cookie
        self.render(f"{self.name}.html", current=self.current)  # layout only: no data goes into a page


class Static(tornado.web.StaticFileHandler, Base):
    """The page's scripts and style, behind the login as everything else."""

    def set_default_headers(self) -> None:
        Base.set_default_headers(self)
        self.clear_header("Cache-Control")  # a script may be cached; its data never is

    def prepare(self) -> None:
        Base.prepare(self)


class Token(Base):
    """``GET /api/token``: the CSRF token (and its cookie) for a script that is not a page."""

    def get(self) -> None:
        self.send_json({"token": self.xsrf_token.decode()})


class OverviewApi(Base):
    async def get(self) -> None:
        self.send_json(await self.blocking(self.application.settings["mutitask_overview"]().build))


class DevicesApi(Base):
    async def get(self) -> None:
        self.send_json(await self.blocking(views.device_rows))


class DeviceActionApi(Base):
    async def post(self, action: str) -> None:
        await self.act(views.act_on_devices, action)


class ChannelCancelApi(Base):
    """``POST /api/channels/cancel`` ``{"channel": N}``: cancel the channel's run (the page
    asks the operator to confirm first; CSRF-checked as every POST)."""

    async def post(self) -> None:
        await self.act(views.cancel_channel, "cancel")


class DeadListApi(Base):
    """``GET /api/dead``: a page of records, filtered as an action's body is (the same names, as
    query arguments), and how many the filter names in all."""

    async def get(self) -> None:
        channel = self._int("channel", None)
        offset, limit = self._int("offset", 0), self._int("limit", 50)
        texts = {name: self.get_query_argument(name, None) for name in views.FILTER_TEXTS}
        try:
            self.send_json(await self.blocking(self._page, channel, offset, limit, texts))
        except ConfigurationError as exc:
            raise tornado.web.HTTPError(400, reason=str(exc)) from None

    @staticmethod
    def _page(channel: int | None, offset: int, limit: int, texts: dict[str, str | None]) -> dict[str, Any]:
        return views.dead_page(channel, offset, limit, views.dead_filter(texts))

    def _int(self, name: str, default: int | None) -> Any:
        raw = self.get_query_argument(name, None)
        if raw in (None, ""):
            return default
        try:
            return int(raw)
        except ValueError:
            raise tornado.web.HTTPError(400, reason=f"{name} must be a whole number, got {raw[:20]!r}") from None


class DeadRecordApi(Base):
    async def get(self) -> None:
        task_id = self.get_query_argument("id", "")
        try:
            self.send_json(await self.blocking(views.dead_record, task_id))
        except RecordNotFound:
            raise tornado.web.HTTPError(404, reason="no dead letter with that id") from None


class DeadActionApi(Base):
    async def post(self, action: str) -> None:
        await self.act(views.act_on_dead, action)


class ScalerApi(Base):
    """``GET /api/scaler``: the backlog in tasks and the devices at work, for an autoscaler.

    ``{"backlog": N, "devices": N, "channels": {"1": {"backlog": N, "devices": N}, ...}}``
    (see :mod:`.scaler`): every channel the books know, keyed by its number as a string. KEDA's
    ``metrics-api`` scaler reads it with ``valueLocation: backlog`` (or ``channels.1.backlog``).

    It is behind the same login as every path: with ``MUTITASK_WEB_PASSWORD`` set, give the
    trigger ``authMode: basic`` and a ``TriggerAuthentication`` whose ``username`` and
    ``password`` come from a Secret holding ``MUTITASK_WEB_USER`` and the password. It reads
    Redis only (three or four round trips, on a thread of its own), never asks the devices.
    """

    async def get(self) -> None:
        figures = await self.blocking(scaler.figures, pool="mutitask_scaler_pool")
        self.send_json(figures.as_dict())


class Metrics(Base):
    async def get(self) -> None:
        snapshot = await self.blocking(self.application.settings["mutitask_overview"]().build)
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.finish(metrics.render(snapshot))


def make_app(config: WebConfig, history: views.RateHistory | None = None) -> tornado.web.Application:
    """The application; ``history`` the sampler's (one is made when not given)."""
    history = history or views.RateHistory()
    static = str(resources.files(__package__).joinpath("static"))
    pages = str(resources.files(__package__).joinpath("pages"))
    return tornado.web.Application(
        [
            (r"/", Page, {"name": "overview", "current": "/"}),
            (r"/dead", Page, {"name": "dead", "current": "/dead"}),
            (r"/dead/record", Page, {"name": "record", "current": "/dead"}),
            (r"/static/(.*)", Static, {"path": static}),
            (r"/api/token", Token),
            (r"/api/overview", OverviewApi),
            (r"/api/devices", DevicesApi),
            (r"/api/scaler", ScalerApi),
            (r"/api/devices/(pause|start|stop)", DeviceActionApi),
            (r"/api/channels/cancel", ChannelCancelApi),
            (r"/api/dead", DeadListApi),
            (r"/api/dead/record", DeadRecordApi),
            (r"/api/dead/(reload|delete)", DeadActionApi),
            (r"/metrics", Metrics),
        ],
        template_path=pages,  # base.html and a page each, autoescaped (tornado's default)
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"samesite": "Strict"},
        mutitask_config=config,
        mutitask_pool=ThreadPoolExecutor(1, thread_name_prefix="mutitask-web"),
        mutitask_scaler_pool=ThreadPoolExecutor(1, thread_name_prefix="mutitask-web-scaler"),
        mutitask_overview=lambda: views.Overview(history),
        mutitask_history=history,
    )


def _sample(history: views.RateHistory) -> None:
    try:
        history.add(time.time(), views.finished(scaler.known_channels()))
    except (MutitaskError, OSError, ConnectionError) as exc:  # Redis away: a gap in the plot
        log.warning("web: cannot read the books for the rate plot: %s", exc)


def serve(config: WebConfig, ready: Callable[[str], None] | None = None) -> None:
    """Serve until the loop stops (Ctrl-C); ``ready`` gets the page's address."""
    check_listen(config)
    app = make_app(config)
    history: views.RateHistory = app.settings["mutitask_history"]
    pool: ThreadPoolExecutor = app.settings["mutitask_pool"]
    scaler_pool: ThreadPoolExecutor = app.settings["mutitask_scaler_pool"]
    server = tornado.httpserver.HTTPServer(app)
    server.listen(config.port, config.host)
    loop = tornado.ioloop.IOLoop.current()

    def sample() -> None:
        loop.run_in_executor(pool, _sample, history)

    sampler = tornado.ioloop.PeriodicCallback(sample, SAMPLE_EVERY * 1000)
    sample()
    sampler.start()
    host = f"[{config.host}]" if ":" in config.host else config.host
    if ready is not None:
        ready(f"http://{host}:{config.port}/")
    try:
        loop.start()
    finally:
        sampler.stop()
        server.stop()
        pool.shutdown(wait=False)
        scaler_pool.shutdown(wait=False)
