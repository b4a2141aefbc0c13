"""The ``mutitask`` command (also ``python -m mutitask_celery``).

Exit codes (``errors.ExitCode``): 0 done; 1 not done (a record or device asked for does
not exist, or no device answered); 2 bad usage or configuration; 3 Redis or the broker
cannot be reached; 75 ``mutitask stop``: a device is still stopping (its warm shutdown waits
for a task; the output names it). The codes a run's processes end with are in the README.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from mutitask_celery import api, runtime, settings
from mutitask_celery.books.cancels import NothingToCancel
from mutitask_celery.books.dead_filter import GLOB, MOMENT_HELP, parse_moment
from mutitask_celery.books.rate_limits import describe, parse_rate
from mutitask_celery.books.records import FailedTask, Kind, table_rows
from mutitask_celery.connection import check_redis
from mutitask_celery.control import STOP_WAIT, VERBS, Devices, StopReport
from mutitask_celery.errors import BrokerUnavailable, ConfigurationError, ExitCode, RecordNotFound
from mutitask_celery.tables import format_devices, format_table, local_time
from mutitask_celery.web import app as web_app
from mutitask_celery.web import scaler

EPILOG = """\
examples:
  mutitask status                           every device: state, channels, tasks in hand and done
  mutitask status --json                    ... as JSON, with the backlog in tasks (what /api/scaler says)
  mutitask pause device2                    device2 finishes its task in hand and takes no new one
  mutitask start --all                      every device takes tasks again
  mutitask stop 3                           device3 finishes its task in hand and exits
  mutitask stop 3 --wait 60                 ... waiting up to 60 s for it to end (default 10)
  mutitask rate 1 20                        at most 20 tasks of channel 1 start a second, all devices together
  mutitask cancel 2                         channel 2's run ends: waiting tasks recorded cancelled, none starts
  mutitask failed list --channel 1          the failed tasks of channel 1, oldest first
  mutitask failed show 3f2a...              one record, with its traceback
  mutitask failed reload --all              every failed task back onto its channel
  mutitask failed delete --channel 2        forget channel 2's failed tasks
  mutitask failed count --json              counts for scripts
  mutitask failed reload --reason 'ConnectionError*' --since 10m --dry-run
                                            how many of the last 10 minutes' ConnectionErrors would go back
  mutitask failed delete --device device2 --until 2026-12-04T10:00
                                            forget what device2 failed before then
  mutitask failed find example.com --limit 20
                                            the failed tasks whose text holds example.com
  mutitask web --port 5566                  the operator's page: channels, devices, dead letters, /metrics
  mutitask demo                             a server and three devices working a job here, then a status table

exit codes: 0 done, 1 not found (or no device answered; cancel: nothing to cancel), 2 bad usage, 3 Redis unreachable,
  75 stop: a device still runs a task and is stopping (the task is named; ask again later)
"""


WEB_DESCRIPTION = f"""\
Serve the operator's page: channels (published, done, failed, outstanding, rate, a plot
of the rate), devices with Pause / Start / Stop, and the dead-letter store with Reload /
Delete; the same as JSON under /api/, and /metrics for Prometheus.

Login: MUTITASK_WEB_USER (default admin) and MUTITASK_WEB_PASSWORD, HTTP basic auth on
every path. Without a password the page listens on a loopback address only.

examples:
  mutitask web                                     http://127.0.0.1:{web_app.DEFAULT_PORT}/, this machine only
  MUTITASK_WEB_PASSWORD=... mutitask web --host 0.0.0.0
"""


REASON_HELP = (
    "only records whose reason (the exception type and its text, as stored) contains TEXT: a plain, "
    f"case-sensitive substring; TEXT with any of {' '.join(sorted(GLOB))} is a glob the whole reason must match "
    "(quote it: 'ConnectionError*' is every ConnectionError)"
)
DEVICE_HELP = "only records of this device: device2@host, or device2 (on any host), or 2"
FILTERS = ("reason", "device", "since", "until")


def _table(records: Sequence[FailedTask]) -> str:
    return format_table(table_rows(records))


def _selection(args: argparse.Namespace) -> tuple[int | None, list[str] | None]:
    """What ``failed reload|delete`` acts on: --all, a channel, the IDs, or a filter (which
    narrows the others)."""
    if args.ids:
        return args.channel, args.ids
    if args.all or args.channel is not None or _filtering(args):
        return args.channel, None
    raise ConfigurationError("say which: --all, --channel C, a filter (--reason, --device, --since, --until), or IDs")


def _filtering(args: argparse.Namespace) -> bool:
    return any(getattr(args, name) is not None for name in FILTERS)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The filter options given, as the API's keywords."""
    return {name: getattr(args, name) for name in FILTERS if getattr(args, name) is not None}


def _natural(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text!r}")
    return int(text)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _moment(text: str) -> float | timedelta:
    """``--since``/``--until``: a duration or a time, checked here (exit 2 with the reason)."""
    try:
        return parse_moment(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _some_text(text: str) -> str:
    if text == "":
        raise argparse.ArgumentTypeError("must not be empty (leave the option out to match every record)")
    return text


def _add_filters(parser: argparse.ArgumentParser) -> None:
    """The dead-letter filters every ``failed`` command that chooses records takes."""
    parser.add_argument("--channel", type=_positive_int)
    parser.add_argument("--reason", type=_some_text, metavar="TEXT", help=REASON_HELP)
    parser.add_argument("--device", type=_some_text, metavar="DEVICE", help=DEVICE_HELP)
    parser.add_argument(
        "--since", type=_moment, metavar="WHEN", help=f"only records that last failed at or after WHEN: {MOMENT_HELP}"
    )
    parser.add_argument("--until", type=_moment, metavar="WHEN", help="only records that last failed at or before WHEN")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mutitask",
        description="Inspect and manage mutitask_celery runs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    url_help = f"Redis URL (default: $MUTITASK_REDIS_URL, celeryconfig.py, {settings.DEFAULT_REDIS_URL})"
    parser.add_argument("--redis-url", help=url_help)
    # Accepted after the sub-command too (mutitask failed list --redis-url ...).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", default=argparse.SUPPRESS, help=url_help)
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", parents=[common], help="every device and its state")
    status.add_argument(
        "--json",
        action="store_true",
        help='{"devices": [...], "scaler": {"backlog": N, ...}}: the devices, and the figures of /api/scaler',
    )
    status.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for devices to answer")
    status.set_defaults(handler=_status)
    for name, text in (
        ("pause", "devices finish the task in hand and take no new one"),
        ("start", "paused devices take tasks again"),
        ("stop", "devices finish the task in hand and exit"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("devices", nargs="*", metavar="DEVICE", help="device3, device3@host or 3")
        p.add_argument("--all", action="store_true")
        p.add_argument("--json", action="store_true")
        p.set_defaults(handler=_control)
        if name == "stop":
            p.add_argument(
                "--wait",
                type=float,
                default=STOP_WAIT,
                help=f"seconds to wait for the devices to end (default {STOP_WAIT:g}); "
                "one still running a task then is reported stopping, exit 75",
            )
            p.set_defaults(handler=_stop)
    rate = sub.add_parser(
        "rate",
        parents=[common],
        help="a channel's rate limit: tasks a second, all its devices together",
        description="Set a channel's rate limit (running devices keep to it within a second), remove it with "
        "off, or list every channel's limit without arguments.",
    )
    rate.add_argument("channel", nargs="?", type=_positive_int, metavar="CHANNEL")
    rate.add_argument("per_second", nargs="?", metavar="PER_SECOND|off")
    rate.add_argument("--json", action="store_true")
    rate.set_defaults(handler=_rate)
    cancel = sub.add_parser(
        "cancel",
        parents=[common],
        help="end a channel's run: waiting tasks are recorded cancelled, devices start none",
        description="Cancel a channel's run (or every channel's with --all): its server takes no more tasks from "
        "its generator, the tasks waiting in its queue leave the books as cancelled (counted, never run, not "
        "dead letters), devices start none of its tasks, and the ones running end as they will (a task function "
        "may poll mutitask_celery.cancelled()). The server's run then ends with exit code 9.",
    )
    cancel.add_argument("channels", nargs="*", type=_positive_int, metavar="CHANNEL")
    cancel.add_argument("--all", action="store_true", help="every channel with a run going")
    cancel.add_argument("--json", action="store_true")
    cancel.set_defaults(handler=_cancel)
    failed = sub.add_parser(
        "failed", help="the dead-letter store", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    fsub = failed.add_subparsers(dest="action", required=True)
    ls = fsub.add_parser("list", parents=[common], help="list failed tasks, oldest failure first")
    _add_filters(ls)
    ls.add_argument(
        "--limit",
        type=_positive_int,
        default=api.PAGE,
        help=f"records a page (default {api.PAGE}); --offset for the next",
    )
    ls.add_argument("--offset", type=_natural, default=0)
    ls.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    ls.set_defaults(handler=_failed_list)
    find = fsub.add_parser(
        "find",
        parents=[common],
        help="failed tasks whose text holds TEXT, oldest failure first",
        description="Failed tasks whose task text (as `failed show` prints it) holds TEXT, case-sensitive, listed "
        "as `failed list` lists them. No index knows a task's text: it reads every record the other filters leave.",
    )
    find.add_argument("text", type=_some_text, metavar="TEXT")
    _add_filters(find)
    find.add_argument("--limit", type=_positive_int, default=api.PAGE, help=f"matches a page (default {api.PAGE})")
    find.add_argument("--offset", type=_natural, default=0, help="matches to skip first")
    find.add_argument("--cursor", help="start after the matches of the page that printed it (faster than --offset)")
    find.add_argument("--json", action="store_true", help='{"records": [...], "cursor": C or null}, for scripts')
    find.set_defaults(handler=_failed_find)
    show = fsub.add_parser("show", parents=[common], help="one failed task, whole")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_failed_show)
    count = fsub.add_parser("count", parents=[common], help="how many failed tasks, per channel")
    _add_filters(count)
    count.add_argument("--json", action="store_true")
    count.set_defaults(handler=_failed_count)
    for name, text in (("reload", "put failed tasks back on their channels"), ("delete", "delete failed tasks")):
        p = fsub.add_parser(
            name,
            parents=[common],
            help=text,
            description=f"{text[0].upper()}{text[1:]}: the IDs given, --all, a --channel, or those the filters name "
            "(every filter given must hold; with IDs or --channel they narrow those). What matched when the command "
            "began, at most: a task that fails again meanwhile is not met twice.",
        )
        p.add_argument("ids", nargs="*", metavar="ID")
        p.add_argument("--all", action="store_true")
        _add_filters(p)
        p.add_argument("--dry-run", action="store_true", help="print how many would move, and move none")
        p.add_argument("--json", action="store_true")
        p.set_defaults(handler=_failed_move)
    web = sub.add_parser(
        "web",
        parents=[common],
        help="the operator's web page, its JSON API and /metrics",
        description=WEB_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    host_help = f"address to listen on (default {web_app.DEFAULT_HOST})"
    web.add_argument("--host", default=web_app.DEFAULT_HOST, help=host_help)
    web.add_argument("--port", type=int, default=web_app.DEFAULT_PORT, help=f"port (default {web_app.DEFAULT_PORT})")
    web.set_defaults(handler=_web)
    from mutitask_celery.tools import demo

    demo_parser = sub.add_parser(
        "demo",
        help="a server and three devices working a real job on this machine (no Redis needed)",
        description=demo.DESCRIPTION,
        epilog=demo.DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(handler=_demo)
    return parser


def _status(args: argparse.Namespace) -> int:
    """``mutitask status``: every device and its state, then how many names were forgotten.
    ``--json``: ``{"devices": [...], "scaler": {...}}``, the latter what ``/api/scaler`` says."""
    base = runtime.devices()
    found = Devices(
        base.client, timeout=args.timeout, flower_url=base.flower_url, dead_after=base.dead_after, keys=base.keys
    ).devices()
    if args.json:
        print(json.dumps({"devices": [d.as_dict() for d in found], "scaler": scaler.figures().as_dict()}, indent=1))
        return ExitCode.OK
    print(format_devices(found) if found else "no device has started yet")
    print(describe(api.rate_limits()))
    forgotten = base.forgotten()
    if forgotten:
        after = settings.current().forget_after
        print(
            f"forgotten: {len(forgotten)} device(s) silent for over {after:.0f} s with nothing in hand "
            f"(the latest {local_time(max(forgotten.values()))}); one that starts again comes back"
        )
    return ExitCode.OK


def _rate(args: argparse.Namespace) -> int:
    """``mutitask rate [CHANNEL PER_SECOND|off]``: set or remove a limit, or list them."""
    if args.channel is not None:
        if args.per_second is None:
            raise ConfigurationError("say the rate: mutitask rate CHANNEL PER_SECOND (or off)")
        api.set_rate_limit(args.channel, parse_rate(args.per_second))
    limits = api.rate_limits()
    print(json.dumps({str(c): r for c, r in limits.items()}) if args.json else describe(limits))
    return ExitCode.OK


def _cancel(args: argparse.Namespace) -> int:
    """``mutitask cancel CHANNEL... | --all``: 0 when each was cancelled, 1 when there was
    nothing to cancel (a channel unknown, or finished), named."""
    if args.all == bool(args.channels):
        raise ConfigurationError("say which: one or more CHANNELs, or --all")
    done, missing = [], []
    for channel in [None] if args.all else args.channels:
        try:
            done += api.cancel(channel)
        except NothingToCancel as exc:
            missing.append(str(exc))
    if args.json:
        print(json.dumps({"cancelled": [vars(c) for c in done], "nothing_to_cancel": missing}))
    else:
        for line in [c.line() for c in done] + missing:
            print(line)
    return ExitCode.FAILED if missing else ExitCode.OK


def _control(args: argparse.Namespace) -> int:
    """``mutitask pause|start DEVICE... | --all``: one control command, exit 1 if no device did it."""
    if args.all == bool(args.devices):
        raise ConfigurationError("say which: one or more DEVICEs, or --all")
    selectors = None if args.all else args.devices
    devices = runtime.devices()
    done = devices.apply(args.command, selectors)
    verb = VERBS[args.command]
    print(json.dumps({verb: done}) if args.json else f"{verb}: {', '.join(done) or 'none'}")
    return ExitCode.OK if done else ExitCode.FAILED


def _stop(args: argparse.Namespace) -> int:
    """``mutitask stop DEVICE... | --all [--wait S]``: 0 when every device asked for ended, 75
    when one still finishes a task (named), 1 when none was running."""
    if args.all == bool(args.devices):
        raise ConfigurationError("say which: one or more DEVICEs, or --all")
    report = runtime.devices().stop_report(None if args.all else args.devices, wait=args.wait)
    print(json.dumps(report.as_dict()) if args.json else _describe_stop(report))
    if report.stopping:
        return ExitCode.STILL_STOPPING
    return ExitCode.OK if report.stopped else ExitCode.FAILED


def _describe_stop(report: StopReport) -> str:
    lines = [f"stopped: {', '.join(report.stopped) or 'none'}"]
    for name, running in report.stopping.items():
        what = "; ".join(r.describe() for r in running) or "no task the books know of"
        lines.append(
            f"still stopping: {name} (its process lives, in a warm shutdown, until its tasks end) runs {what}; "
            "it ends when they do, or kill its process and its tasks go to another device"
        )
    if report.not_running:
        lines.append(f"not running: {', '.join(report.not_running)}")
    return "\n".join(lines)


def _failed_list(args: argparse.Namespace) -> int:
    """``mutitask failed list``: a page of records, oldest failure first."""
    records = api.failed(args.channel, args.limit, args.offset, **_filters(args))
    print(json.dumps([r.as_dict() for r in records], indent=1) if args.json else _table(records))
    return ExitCode.OK


def _failed_find(args: argparse.Namespace) -> int:
    """``mutitask failed find TEXT``: a page of the records whose task text holds TEXT; the
    cursor of the next page, when there is one."""
    found = api.find_failed(
        args.text,
        args.channel,
        args.limit,
        args.offset,
        cursor=args.cursor,
        **_filters(args),
    )
    if args.json:
        print(json.dumps({"records": [r.as_dict() for r in found.records], "cursor": found.cursor}, indent=1))
        return ExitCode.OK
    print(_table(found.records) if found.records else "no failed task's text holds that")
    if found.cursor is not None:
        print(f"more: --cursor {found.cursor}")
    return ExitCode.OK


def _failed_show(args: argparse.Namespace) -> int:
    """``mutitask failed show ID``: one record, whole, with its traceback."""
    record = api.get_failed(args.id)
    if args.json:
        print(json.dumps(record.as_dict(), indent=1))
        return ExitCode.OK
    exported = record.as_dict()
    for f in FailedTask.FIELDS:
        value = exported[f.name]
        print(f"{f.name:>12}: {local_time(value) if f.kind is Kind.TIME else value}")
    return ExitCode.OK


def _failed_count(args: argparse.Namespace) -> int:
    """``mutitask failed count``: records per channel, in all, and what the retention limits
    dropped; with filters, those the filters name (one search for every channel)."""
    if _filtering(args):
        where = api.dead_filter(args.channel, **_filters(args))
        counts = {str(c): n for c, n in runtime.store().counts(where).items()}
        total = sum(counts.values())
    else:
        channels = [args.channel] if args.channel else runtime.store().channels()
        counts = {str(c): api.failed_count(c) for c in channels}
        total = api.failed_count(args.channel)
    dropped = api.failed_dropped(args.channel)
    if args.json:
        print(json.dumps({"total": total, "channels": counts, "dropped": dropped}))
        return ExitCode.OK
    for c, n in counts.items():
        print(f"channel {c}: {n}")
    print(f"total: {total}")
    if dropped:
        print(f"dropped by the retention limits: {dropped}")
    return ExitCode.OK


def _failed_move(args: argparse.Namespace) -> int:
    """``mutitask failed reload|delete``: chosen records, a channel's, those the filters name,
    or all; ``--dry-run``: how many would move. Exit 1 if no chosen ID existed (or matched)."""
    channel, ids = _selection(args)
    action = api.reload_failed if args.action == "reload" else api.delete_failed
    n = action(channel, ids, dry_run=args.dry_run, **_filters(args))
    verb = "reloaded" if args.action == "reload" else "deleted"
    if args.dry_run:
        print(json.dumps({f"would_{args.action}": n}) if args.json else f"would {args.action} {n} failed task(s)")
    else:
        print(json.dumps({verb: n}) if args.json else f"{verb} {n} failed task(s)")
    return ExitCode.FAILED if ids and n == 0 else ExitCode.OK


def _web(args: argparse.Namespace) -> int:
    """``mutitask web``: serve the page until Ctrl-C."""
    config = web_app.WebConfig.from_environ(args.host, args.port)
    login = f"log in as {config.user}" if config.password else "no password: this machine only"
    try:
        web_app.serve(config, ready=lambda url: print(f"mutitask web: {url} ({login}); Ctrl-C stops", flush=True))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, the address is not this machine's
        raise ConfigurationError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return ExitCode.OK


def _demo(args: argparse.Namespace) -> int:
    """``mutitask demo``: brings its own Redis unless given --redis-url, so no check of the configured one."""
    from mutitask_celery.tools.demo import main as demo_main

    return demo_main(args)


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run its sub-command's function (each parser names it as ``handler``)."""
    args = build_parser().parse_args(argv)
    if args.handler is not _demo:
        conf = settings.configure(redis_url=args.redis_url)
        runtime.reset(conf)
        check_redis(conf.redis_url)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except RecordNotFound as exc:
        print(f"mutitask: no failed task with id {exc.args[0]}", file=sys.stderr)
        return ExitCode.FAILED
    except ConfigurationError as exc:
        print(f"mutitask: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except BrokerUnavailable as exc:
        print(f"mutitask: {exc}", file=sys.stderr)
        return ExitCode.UNREACHABLE


if __name__ == "__main__":
    raise SystemExit(main())
