"""Read device status from Flower's REST API.

Flower watches the cluster two ways, and each answers a different question, so
:func:`flower_workers` asks both (documented endpoints only, standard library
only):

* ``GET /api/workers?status=1``: Flower's *event* view, ``{name: alive}``. A
  device is alive while its heartbeats (every 2 s) keep coming and it has not
  said ``worker-offline``: this is what "online" means.
* ``GET /api/workers?refresh=1&workername=<name>``: a fresh *inspect* of one
  device (its stats, queues and the tasks in hand), for each online device. One
  device at a time because Flower fetches the task lists (``active``) only when
  asked about one worker, and because a broadcast to all workers always waits
  Flower's whole inspect timeout (1 s), while a named one returns on its reply.
* ``GET /api/workers``: what Flower last learnt about the offline ones.

A URL with ``user:password@`` is sent as basic auth (Flower's
``--basic-auth``). The password never appears in a message: URLs are shown
through :func:`~mutitask_celery.settings.mask_url`, and redirects are not
followed, so the Authorization header only ever goes to the host in the URL.
An API without authentication answers only when Flower was started with
``FLOWER_UNAUTHENTICATED_API=1`` in its environment (Flower 2.x).

Errors (both also ``ConnectionError``, like ``BrokerUnavailable``)::

    MutitaskError
     └── FlowerError (ConnectionError)   Flower cannot be reached or answers oddly
          └── FlowerAuthError            Flower refused the credentials (or lack of them)
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from mutitask_celery.errors import ConfigurationError, MutitaskError
from mutitask_celery.settings import mask_url

__all__ = ["FlowerAuthError", "FlowerError", "FlowerWorker", "flower_workers"]

_EXCERPT = 200


class FlowerError(MutitaskError, ConnectionError):
    """Flower cannot be reached, or does not answer as its API documents."""


class FlowerAuthError(FlowerError):
    """Flower refused the request: wrong user or password, or none given."""


@dataclass(frozen=True)
class FlowerWorker:
    """One device (Celery worker) as Flower sees it.

    ``processed`` is the worker's own count of tasks it took since it started
    (``stats.total``, summed over task names), so it is exact, and restarts at
    0 with the device. ``active`` counts the tasks in hand (0 when offline, or
    when the worker did not answer Flower's inspect).
    ``last_heard`` is when Flower last got an inspect reply from it, Unix time
    on Flower's clock; None when it never did.
    """

    name: str
    online: bool
    active: int
    processed: int
    queues: list[str]
    last_heard: float | None


def flower_workers(url: str, timeout: float = 3.0) -> dict[str, FlowerWorker]:
    """Every device Flower knows, by name (``device<ID>@<host>``).

    ``url`` is Flower's base URL, with its ``--url_prefix`` path if any, e.g.
    ``http://user:secret@127.0.0.1:5555``. ``timeout`` bounds the whole call
    (several requests), in seconds. Raises :class:`FlowerAuthError` when Flower
    refuses the credentials, :class:`FlowerError` when it cannot be reached,
    does not answer in time or answers something else than its API's JSON, and
    :class:`~mutitask_celery.errors.ConfigurationError` for a URL that is not
    ``http(s)://``.
    """
    client = _Client(url, timeout)
    alive = client.get_json("/api/workers?status=1")
    known = client.get_json("/api/workers")
    if not isinstance(alive, dict) or not isinstance(known, dict):
        raise client.error("answered something else than a JSON object of workers")
    infos: dict[str, Any] = dict(known)
    fresh: set[str] = set()
    for name in sorted(name for name, up in alive.items() if up):
        answer = client.get_json(f"/api/workers?refresh=1&workername={quote(name, safe='')}", missing_ok=True)
        if isinstance(answer, dict) and isinstance(answer.get(name), dict):
            infos[name] = answer[name]
            fresh.add(name)
    return {
        name: client.worker(name, bool(alive.get(name)), infos.get(name), name in fresh)
        for name in sorted(set(alive) | set(infos))
    }


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turn redirects into errors: urllib would resend the Authorization header
    to wherever Flower points (another host, or OAuth's login page)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Client:
    """The requests of one :func:`flower_workers` call, sharing its deadline."""

    def __init__(self, url: str, timeout: float) -> None:
        self.shown = mask_url(url)
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        try:
            parts = urlsplit(url)
            user, password, port = parts.username, parts.password, parts.port
        except ValueError:
            raise ConfigurationError(f"not a Flower URL: {self.shown!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"not a Flower URL: {self.shown!r} (expected e.g. http://127.0.0.1:5555)")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = f"{host}:{port}" if port is not None else host
        self.base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.headers = {"Accept": "application/json"}
        self.secret = unquote(password) if password is not None else None
        if user is not None or password is not None:
            pair = f"{unquote(user or '')}:{self.secret or ''}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        self.opener = urllib.request.build_opener(_NoRedirect())

    def error(self, what: str, auth: bool = False) -> FlowerError:
        message = f"Flower at {self.shown} {what}"
        if self.secret:  # a server could echo what it was sent: never show it
            message = message.replace(self.secret, "***")
        return (FlowerAuthError if auth else FlowerError)(message)

    def get_json(self, path: str, missing_ok: bool = False) -> Any:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self.error(f"did not answer within {self.timeout}s")
        request = urllib.request.Request(self.base + path, headers=self.headers)
        try:
            with self.opener.open(request, timeout=remaining) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            raise self._http_error(exc, path) from None
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                raise self.error(f"did not answer within {self.timeout}s") from None
            raise self.error(f"cannot be reached: {reason}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise self.error(f"did not answer JSON to GET {path}: {_excerpt(body)!r}") from None

    def _http_error(self, exc: urllib.error.HTTPError, path: str) -> FlowerError:
        body = _excerpt(exc.read())
        detail = f": {body}" if body else ""
        if exc.code == 401 and "FLOWER_UNAUTHENTICATED_API" in body:
            # Flower 2.x without --basic-auth closes its API unless told otherwise.
            return self.error(
                "has no authentication set up and so keeps its API closed "
                "(HTTP 401): start it with FLOWER_UNAUTHENTICATED_API=1 in its "
                "environment, or with --basic-auth=user:password",
                auth=True,
            )
        if exc.code == 401 and "Authorization" in self.headers:
            return self.error("refused the user and password in the URL (HTTP 401)", auth=True)
        if exc.code == 401:
            return self.error(
                f"wants credentials (HTTP 401){detail}; give them in the URL: http://user:password@host:port", auth=True
            )
        if exc.code == 403:
            return self.error(f"refused access (HTTP 403){detail}", auth=True)
        if 300 <= exc.code < 400:
            location = exc.headers.get("Location", "")
            if "/login" in location:
                return self.error("asks for an OAuth login; this client speaks basic auth only", auth=True)
            return self.error(f"redirects GET {path} (HTTP {exc.code}); is the URL its base URL?")
        if exc.code == 404:
            return self.error(f"has no GET {path} (HTTP 404); is the URL its base URL?")
        return self.error(f"answered HTTP {exc.code} to GET {path}{detail}")

    def worker(self, name: str, online: bool, info: Any, fresh: bool) -> FlowerWorker:
        """``info`` is Flower's inspect entry; its task lists are current only when ``fresh``."""
        info = info if isinstance(info, dict) else {}
        try:
            stats = info.get("stats") or {}
            processed = sum(int(count) for count in (stats.get("total") or {}).values())
            queues = [str(queue["name"]) for queue in info.get("active_queues") or []]
            active = len(info.get("active") or []) if fresh else 0
            stamp = info.get("timestamp")
            last_heard = float(stamp) if stamp is not None else None
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise self.error(f"described {name!r} in an unexpected shape ({exc!r})") from None
        return FlowerWorker(
            name=name, online=online, active=active, processed=processed, queues=queues, last_heard=last_heard
        )


def _excerpt(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."
