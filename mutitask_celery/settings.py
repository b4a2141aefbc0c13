"""One table of settings, read from defaults, then ``celeryconfig.py``, then the
environment, then explicit arguments (each later source wins).

Every setting is declared once in :data:`SETTINGS` with its environment
variable, its names in ``celeryconfig.py`` and its default; the README's
configuration table is this table. Celery's own settings (``broker_url``,
``worker_prefetch_multiplier``, ...) stay Celery's: put them in
``celeryconfig.py`` as Celery documents.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import ModuleType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from mutitask_celery.errors import ConfigurationError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CONFIG_MODULE = "celeryconfig"
# Seconds between a device's heartbeats, and between the recovery rounds of the server and of
# every device. Not a setting: dead_after (a setting) is counted in these.
HEARTBEAT = 2.0


@dataclass(frozen=True)
class Setting:
    """One setting: where it can come from and what it means."""

    name: str
    env: str
    config_names: tuple[str, ...]
    default: Any
    parse: Callable[[str], Any]
    doc: str
    shown: str | None = None  # the default as the README shows it, when not its Python value


def _url(value: str) -> str:
    if "://" not in value:
        raise ConfigurationError(f"not a URL: {mask_url(value)!r} (expected e.g. {DEFAULT_REDIS_URL})")
    return value


def _optional_positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        if value.strip().lower() in ("", "none", "0"):
            return None
        try:
            number = kind(value)
        except ValueError:
            raise ConfigurationError(f"expected a positive number or 'none', got {value!r}") from None
        if number <= 0:
            raise ConfigurationError(f"expected a positive number or 'none', got {value!r}")
        return number

    return parse


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


def _optional_size(value: str) -> int | None:
    """Bytes: ``67108864``, ``64MiB``, ``64 MB``; ``none`` or ``0``: no bound."""
    text = value.strip().lower()
    if text in ("", "none", "0"):
        return None
    match = _SIZE.match(text)
    if match is None or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        raise ConfigurationError(f"expected a size in bytes (e.g. 67108864, 64MiB, 1GB) or 'none', got {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _seconds(value: str) -> float:
    """Seconds, 0 or more: ``25``, ``2.5``."""
    try:
        number = float(value)
    except ValueError:
        raise ConfigurationError(f"expected a number of seconds (0 or more), got {value!r}") from None
    if not number >= 0 or number == float("inf"):  # also refuses nan
        raise ConfigurationError(f"expected a number of seconds (0 or more), got {value!r}")
    return number


def _key_prefix(value: str) -> str:
    """Letters, digits and ``_ . : -`` (a brace would split a Redis Cluster's slot)."""
    text = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.:-]*", text):
        raise ConfigurationError(f"a key prefix may hold letters, digits and _ . : - only, got {value!r}")
    return text


def _name(value: str) -> str:
    text = value.strip()
    if not text or any(c.isspace() for c in text):
        raise ConfigurationError(f"expected a name without spaces, got {value!r}")
    return text


def _secret(value: str) -> str | None:
    return value or None


def _replicas(value: str) -> int | None:
    """``auto`` (None: decided by the URL) or a number of replicas, 0 for none."""
    text = value.strip().lower()
    if text in ("", "auto"):
        return None
    if not text.isdigit():
        raise ConfigurationError(f"expected 'auto' or a number of replicas (0, 1, 2...), got {value!r}")
    return int(text)


_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "none", "")


def _flag(value: str) -> bool:
    """On (``1 true yes on``) or off (``0 false no off``), in any case."""
    word = value.strip().lower()
    if word not in _ON + _OFF:
        raise ConfigurationError(f"expected on or off (1/0, true/false, yes/no), got {value!r}")
    return word in _ON


AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")  # RabbitMQ, as kombu's py-amqp transport names it


def is_amqp(url: str) -> bool:
    """True when ``url`` names an AMQP broker (RabbitMQ)."""
    return urlsplit(url).scheme.lower() in AMQP_SCHEMES


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        word = value.strip().lower()
        if word not in allowed:
            raise ConfigurationError(f"expected one of {', '.join(allowed)}, got {value!r}")
        return word

    return parse


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "redis_url",
        "MUTITASK_REDIS_URL",
        ("mutitask_redis_url",),
        DEFAULT_REDIS_URL,
        _url,
        "Redis that holds the dead-letter store, results and the run's books; "
        "also the broker unless broker_url is set.",
    ),
    Setting(
        "broker_url",
        "MUTITASK_BROKER_URL",
        ("mutitask_broker_url", "broker_url"),
        None,
        _url,
        "Celery broker when it is not the Redis above (e.g. amqp://...).",
    ),
    Setting(
        "flower_url",
        "MUTITASK_FLOWER_URL",
        ("mutitask_flower_url",),
        None,
        _url,
        "Flower's address (http://user:password@host:5555); when set, devices() reads device status from "
        "Flower's REST API instead of asking the workers.",
    ),
    Setting(
        "sentinel_master",
        "MUTITASK_SENTINEL_MASTER",
        ("mutitask_sentinel_master",),
        "mymaster",
        _name,
        "The master's name that the sentinels know, when a URL above is a Sentinel one "
        "(sentinel://host1:26379;sentinel://host2:26379;sentinel://host3:26379/0): the books, the devices, "
        "the server, mutitask and the web page follow the master the sentinels name.",
    ),
    Setting(
        "sentinel_password",
        "MUTITASK_SENTINEL_PASSWORD",
        ("mutitask_sentinel_password",),
        None,
        _secret,
        "The sentinels' own password (their requirepass), when they have one; the master's password goes in "
        "the URL (sentinel://:password@host:26379;...). Never printed.",
    ),
    Setting(
        "confirm_replicas",
        "MUTITASK_CONFIRM_REPLICAS",
        ("mutitask_confirm_replicas",),
        None,
        _replicas,
        "Replicas that must confirm each books step (Redis WAIT, sent with the step) before it counts as done, "
        "so that a failover loses none: behind Sentinel every replica the sentinels might promote, and at "
        "least this many (auto: 1 with a Sentinel URL, 0 otherwise); set 1 for a managed Redis whose one "
        "address fails over to a replica. A step waits, logging why every 10 s, until confirmed.",
        shown="auto",
    ),
    Setting(
        "key_prefix",
        "MUTITASK_KEY_PREFIX",
        ("mutitask_key_prefix",),
        "",
        _key_prefix,
        "Put in front of every Redis key of the run, kombu's too (e.g. team2:), so that two deployments "
        "can share one Redis without seeing each other; queues keep their names (channel1). On RabbitMQ, "
        "give each deployment its own vhost as well.",
    ),
    Setting(
        "quorum_queues",
        "MUTITASK_QUORUM_QUEUES",
        ("mutitask_quorum_queues",),
        False,
        _flag,
        "RabbitMQ only: declare the channel queues as quorum queues (replicated, for a cluster of 3 or more "
        "nodes; see docs/deployment.md) instead of classic ones. The same on every host; a queue keeps the type "
        "it was declared with until it is deleted.",
        shown="off",
    ),
    Setting(
        "dead_after",
        "MUTITASK_DEAD_AFTER",
        ("mutitask_dead_after",),
        10.0,
        _optional_positive(float),
        "Seconds without a device's heartbeat (sent every 2 s) before its tasks go to other devices; also how "
        "long a lease (one server per channel and run, one process per device name) outlives its holder's "
        "last renewal.",
    ),
    Setting(
        "shutdown_grace",
        "MUTITASK_SHUTDOWN_GRACE",
        ("mutitask_shutdown_grace",),
        25.0,
        _seconds,
        "Seconds a device told to leave (SIGTERM, SIGINT) lets its running tasks finish; then it hands their "
        "messages back and exits. Keep it below the time your platform waits before SIGKILL (Kubernetes' "
        "terminationGracePeriodSeconds, 30 by default; systemd's TimeoutStopSec).",
    ),
    Setting(
        "max_attempts",
        "MUTITASK_MAX_ATTEMPTS",
        ("mutitask_max_attempts",),
        3,
        _optional_positive(int),
        "Times a task may kill its device (os._exit, a segfault) before it is dead-lettered as 'worker lost'.",
    ),
    Setting(
        "forget_after",
        "MUTITASK_FORGET_AFTER",
        ("mutitask_forget_after",),
        86400.0,
        _optional_positive(float),
        "Seconds a device may stay silent, with nothing in hand, before the roster forgets its name "
        "(mutitask status says how many were forgotten).",
    ),
    Setting(
        "max_late_runners",
        "MUTITASK_MAX_LATE_RUNNERS",
        ("mutitask_max_late_runners",),
        32,
        _optional_positive(int),
        "Task functions past their time limit that one device process may leave running (each holds a thread); "
        "at the cap the device hands its next message back and stops with exit code 6 for a fresh process. "
        "None: no cap (it stops when no thread can start).",
    ),
    Setting(
        "channel_bytes",
        "MUTITASK_CHANNEL_BYTES",
        ("mutitask_channel_bytes",),
        64 * 1024**2,
        _optional_size,
        "Most task data (as it travels: an array's bytes are about 1.33x larger as text) a channel keeps "
        "outstanding in Redis, besides ChannelSize's count: the server waits for room rather than publish past "
        "it; a task larger than it travels alone. e.g. 64MiB, 1GB; None: no byte bound.",
        shown="64MiB",
    ),
    Setting(
        "dead_letter_max",
        "MUTITASK_DEAD_LETTER_MAX",
        ("mutitask_dead_letter_max",),
        None,
        _optional_positive(int),
        "Most records the dead-letter store keeps; the oldest are dropped (and counted). None: no cap.",
    ),
    Setting(
        "dead_letter_max_age",
        "MUTITASK_DEAD_LETTER_MAX_AGE",
        ("mutitask_dead_letter_max_age",),
        None,
        _optional_positive(float),
        "Seconds a record is kept after its last failure; older ones are dropped (and counted). None: forever.",
    ),
    Setting(
        "progress",
        "MUTITASK_PROGRESS",
        ("mutitask_progress",),
        "auto",
        _choice("auto", "bar", "log", "off"),
        "How a run shows its progress: auto (a live bar on a terminal, a log line otherwise), bar, log or off.",
    ),
    Setting(
        "progress_every",
        "MUTITASK_PROGRESS_EVERY",
        ("mutitask_progress_every",),
        10.0,
        _optional_positive(float),
        "Seconds between progress log lines when the output is not a terminal.",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The resolved settings of this process."""

    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str | None = None
    flower_url: str | None = None
    sentinel_master: str = "mymaster"
    sentinel_password: str | None = field(default=None, repr=False)  # a secret: never printed
    confirm_replicas: int | None = None  # None: auto (see replicas_to_confirm)
    key_prefix: str = ""
    quorum_queues: bool = False
    dead_after: float = 10.0
    shutdown_grace: float = 25.0
    max_attempts: int = 3
    forget_after: float = 86400.0
    max_late_runners: int | None = 32
    channel_bytes: int | None = 64 * 1024**2
    dead_letter_max: int | None = None
    dead_letter_max_age: float | None = None
    progress: str = "auto"
    progress_every: float | None = 10.0

    @property
    def broker(self) -> str:
        """The URL Celery publishes to and consumes from."""
        return self.broker_url or self.redis_url

    @property
    def replicas_to_confirm(self) -> int:
        """Replicas that must confirm each books step: the setting, or for ``auto`` one when the
        books' Redis is found through Sentinel (it has replicas, and fails over to one)."""
        if self.confirm_replicas is not None:
            return self.confirm_replicas
        return 1 if is_sentinel_url(self.redis_url) else 0


DEFAULTS = Settings()  # each setting's default, for code that takes one as an argument


def _config_module() -> ModuleType | None:
    try:
        return importlib.import_module(CONFIG_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != CONFIG_MODULE:
            raise
        return None


def load_settings(
    explicit: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config: object | None = None,
) -> Settings:
    """Resolve every setting: explicit > environment > celeryconfig.py > default."""
    environ = os.environ if environ is None else environ
    config = _config_module() if config is None else config
    explicit = explicit or {}
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        value = setting.default
        for name in reversed(setting.config_names):
            if config is not None and getattr(config, name, None) is not None:
                try:
                    value = setting.parse(str(getattr(config, name)))
                except ConfigurationError as exc:
                    raise ConfigurationError(f"{CONFIG_MODULE}.{name}: {exc}") from None
        if environ.get(setting.env):
            try:
                value = setting.parse(environ[setting.env])
            except ConfigurationError as exc:
                raise ConfigurationError(f"{setting.env}: {exc}") from None
        if explicit.get(setting.name) is not None:
            value = explicit[setting.name]
        values[setting.name] = value
    known = {f.name for f in fields(Settings)}
    return _checked(Settings(**{k: v for k, v in values.items() if k in known}))


def _checked(conf: Settings) -> Settings:
    """``conf``, unless two of its settings contradict each other (a :class:`ConfigurationError`)."""
    if conf.quorum_queues and not is_amqp(conf.broker):
        raise ConfigurationError(
            f"MUTITASK_QUORUM_QUEUES (mutitask_quorum_queues) is on, but the broker is {mask_url(conf.broker)}: "
            "quorum queues are RabbitMQ's. Set MUTITASK_BROKER_URL=amqp://... (on every host), or turn it off."
        )
    return conf


def redis_url_from_parts(
    host: str | None = None,
    port: int | None = None,
    db: int | None = None,
    password: str | None = None,
    base: str = DEFAULT_REDIS_URL,
) -> str | None:
    """Build a Redis URL from the legacy ``host/port/db/password`` arguments.

    Returns None when no part was given, so the other sources decide. Parts
    not given are taken from ``base`` (the URL the other sources chose).
    """
    if host is None and port is None and db is None and password is None:
        return None
    parts = urlsplit(base)
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or port <= 0):
        raise ConfigurationError(f"port must be a positive integer, got {port!r}")
    if db is not None and (not isinstance(db, int) or isinstance(db, bool) or db < 0):
        raise ConfigurationError(f"db must be a non-negative integer, got {db!r}")
    host = host if host is not None else (parts.hostname or "127.0.0.1")
    port = port if port is not None else (parts.port or 6379)
    db = db if db is not None else int(parts.path.lstrip("/") or 0)
    user = parts.username or ""
    if password is None and parts.password is not None:
        password = parts.password
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if password else ""
    return urlunsplit((parts.scheme or "redis", f"{auth}{host}:{port}", f"/{db}", parts.query, ""))


SECRET_PARAMETERS = ("password", "passwd", "secret", "token", "passphrase")  # parts of query names


SENTINEL_SCHEMES = ("sentinel", "sentinels")  # kombu's words: sentinels:// is Sentinel over TLS


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names Redis Sentinels (``sentinel://h1:26379;sentinel://h2:26379/0``)."""
    return url.partition("://")[0].strip().lower() in SENTINEL_SCHEMES


def mask_url(url: str) -> str:
    """The URL with every secret replaced by ``***``, safe to print or log: the password
    of the user part, and any query parameter whose name says it holds one
    (``?password=``, ``ssl_password=``, ``token=``); paths to certificates stay. A Sentinel
    URL (several, joined by ``;``) is masked part by part."""
    if ";" in url and is_sentinel_url(url):
        return ";".join(mask_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[1]}"
        query = "&".join(_mask_parameter(pair) for pair in parts.query.split("&")) if parts.query else ""
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return "<unparsable URL>"


def _mask_parameter(pair: str) -> str:
    name, sep, _value = pair.partition("=")
    return f"{name}=***" if sep and any(word in name.lower() for word in SECRET_PARAMETERS) else pair


_current: Settings | None = None
_explicit: dict[str, Any] = {}
_seen_env: tuple[str | None, ...] = ()


def _env_now() -> tuple[str | None, ...]:
    return tuple(os.environ.get(s.env) for s in SETTINGS)


def current() -> Settings:
    """This process's settings: resolved once, and again whenever one of the
    MUTITASK_* variables changes (so a script that sets MUTITASK_REDIS_URL after
    ``import mutitask_celery`` talks to that Redis, not to the default one)."""
    global _current, _seen_env
    env = _env_now()
    if _current is None or env != _seen_env:
        _current = load_settings(_explicit)
        _seen_env = env
    return _current


def forget() -> None:
    """Read the settings afresh at the next :func:`current` (``celeryconfig.py`` or the
    environment changed); what :func:`configure` was given stays."""
    global _current
    _current = None


def configure(**explicit: Any) -> Settings:
    """Re-resolve with explicit values on top (the legacy ``BaseConfig`` arguments)."""
    global _current, _explicit, _seen_env
    _explicit = {k: v for k, v in explicit.items() if v is not None}
    _current = load_settings(_explicit)
    _seen_env = _env_now()
    return _current


def markdown_rows() -> list[str]:
    """The README's configuration table, one row per setting (a test keeps the two equal)."""
    rows = []
    for s in SETTINGS:
        names = " or ".join(f"`{n}`" for n in s.config_names)
        default = f"`{s.shown}`" if s.shown else "none" if s.default in (None, "") else f"`{s.default}`"
        rows.append(f"| {s.doc} | `{s.env}` | {names} | {default} |")
    return rows
