"""Legacy server API: ``from mutitask_celery.server import BaseConfig, Terminal``.

Only translates the original's names and arguments; the work is done by
:mod:`mutitask_celery.serving.serve`.
"""

from __future__ import annotations

from typing import Any

from mutitask_celery import settings
from mutitask_celery.books.rate_limits import check_rate_map
from mutitask_celery.books.runs import check_run_name
from mutitask_celery.connection import exit_on_unreachable
from mutitask_celery.errors import ConfigurationError, RunCancelled
from mutitask_celery.serving.producer import RunSummary
from mutitask_celery.serving.serve import serve

__all__ = ["BaseConfig", "Terminal"]


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return value


class BaseConfig:
    """The server's settings, with the original's argument names.

    ``host``/``port``/``db``/``password`` given here win over
    ``MUTITASK_REDIS_URL`` and ``celeryconfig.py``; left out, those decide.
    New, optional: ``start_paused=True`` gives the original's start (devices
    wait for ``start_all``); ``rate_limits={1: 20.0}``: at most 20 tasks of
    channel 1 start each second, all devices together; ``resume=True``: a server
    started again after a crash goes on where it was (``run_name`` tells runs
    apart, default ``default``; see ``books.runs``).
    """

    def __init__(
        self,
        deviceNumb: int,
        host: str | None = None,
        port: int | None = None,
        db: int | None = None,
        password: str | None = None,
        ChannelSize: int = 50,
        MonitorWaitTime: float = 5,
        *,
        start_paused: bool = False,
        rate_limits: dict[int, float] | None = None,
        resume: bool = False,
        run_name: str | None = None,
    ) -> None:
        self.device_count = _positive("deviceNumb", deviceNumb)
        self.channel_size = _positive("ChannelSize", ChannelSize)
        if isinstance(MonitorWaitTime, bool) or not isinstance(MonitorWaitTime, (int, float)) or MonitorWaitTime <= 0:
            raise ConfigurationError(f"MonitorWaitTime must be a positive number, got {MonitorWaitTime!r}")
        self.monitor_wait = float(MonitorWaitTime)
        self.start_paused = bool(start_paused)
        self.rate_limits = check_rate_map({} if rate_limits is None else rate_limits)  # channels: by run()
        if not isinstance(resume, bool):
            raise ConfigurationError(f"resume must be True or False, got {resume!r}")
        self.resume = resume
        self.run_name = None if run_name is None else check_run_name(run_name)
        base = settings.load_settings().redis_url
        self.redis_url = settings.redis_url_from_parts(host, port, db, password, base=base)

    # The original's attribute names, read-only views of the new ones.
    @property
    def DeviceNumb(self) -> int:
        return self.device_count

    @property
    def ChannelSize(self) -> int:
        return self.channel_size

    def apply(self) -> settings.Settings:
        return settings.configure(redis_url=self.redis_url)


class Terminal:
    """``Terminal(baseConfig=...).run(tasks)``: publish the tasks and see them through."""

    def __init__(self, baseConfig: BaseConfig) -> None:
        if not isinstance(baseConfig, BaseConfig):
            raise ConfigurationError(
                f"baseConfig must be a Mutitask.server.BaseConfig, got {type(baseConfig).__name__}"
            )
        self.config = baseConfig

    def run(self, tasks: Any) -> RunSummary:
        """``tasks``: a generator/iterator, or a list of them (channel N is the N-th).

        When Redis cannot be reached, the script ends with one clear line (the
        URL, password masked) and exit code 3, not a traceback. A run cancelled
        (``mutitask cancel``) prints its summary and ends the script with exit code 9.
        """
        self.config.apply()
        with exit_on_unreachable():
            summary = serve(
                tasks,
                self.config.channel_size,
                expected_devices=self.config.device_count,
                start_paused=self.config.start_paused,
                monitor_wait=self.config.monitor_wait,
                rate_limits=self.config.rate_limits,
                resume=self.config.resume,
                run_name=self.config.run_name,
            )
            if summary.cancelled_channels:  # the script ends with its own code (9): the run did not finish
                raise RunCancelled(
                    f"the run was cancelled (channel {', '.join(map(str, summary.cancelled_channels))}): "
                    f"{summary.cancelled} task(s) never ran"
                )
            return summary
