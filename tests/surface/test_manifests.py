"""The container image, compose.yaml and deploy/kubernetes/, read against the code.

Nothing here builds an image or starts a container or a cluster (where the suite runs there is
no Docker engine and no Kubernetes): every YAML file is parsed, all of its documents, and the
Dockerfile by its lines. What they say is then checked against the code itself, never against
a list kept here:

* every ``MUTITASK_*`` name they mention is a setting (``settings.SETTINGS``) or one the web page
  reads (``WebConfig.from_environ``, watched as it reads the environment);
* every command is parsed by the parser that will run it: Celery's own ``worker`` command (click),
  its ``-A`` app found as Celery finds it and required to be the package's app, and the ``mutitask``
  CLI's argparse parser for ``mutitask web``, the console script named in pyproject.toml;
* a device is named after its host (``%h``: one name per container or pod, as the one process per
  device name rule needs) and runs with the systemd unit's pool, mingle and gossip options, on
  channels its task module registers;
* the web page's ``--host`` passes ``check_listen`` with the environment the manifest gives it,
  and its ``--port`` is the one the Dockerfile exposes, the containers declare, the Service
  forwards, compose publishes and KEDA's URL names;
* every grace period (Kubernetes' terminationGracePeriodSeconds, compose's stop_grace_period,
  KEDA's cooldownPeriod) is longer than the device's ``MUTITASK_SHUTDOWN_GRACE``, set beside it;
  the stop signal is SIGTERM and reaches the process (the image's entrypoint is kept);
* KEDA's ScaledObject scales the device Deployment on ``backlog`` (or ``channels.<n>.backlog``)
  of the page's ``/api/scaler``, logged in as the page's own user.

Each check returns the problems it finds. ``test_each_check_can_fail`` breaks a copy of the
shipped files in one place at a time and expects the check that guards that place to say so.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import importlib
import io
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import click
import pytest
import yaml
from celery.app.utils import find_app
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_command
from helpers.paths import ROOT
from packaging.specifiers import SpecifierSet

from mutitask_celery import keys, settings
from mutitask_celery.celery_app import app as package_app
from mutitask_celery.errors import ConfigurationError
from mutitask_celery.tools import cli
from mutitask_celery.web import app as web_app

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"
COMPOSE_ENV = ROOT / "deploy" / "compose.env.example"  # what .env beside compose.yaml starts from
KUBERNETES = ROOT / "deploy" / "kubernetes"
SYSTEMD_DEVICE = ROOT / "deploy" / "systemd" / "mutitask-device@.service"
SYSTEMD_ENV = ROOT / "deploy" / "mutitask.env.example"
# The task module every shipped device imports (-I mytasks): compose.yaml's header installs this
# file as app/mytasks.py; a Kubernetes image copies the user's own.
TASK_MODULES = {"mytasks": ROOT / "deploy" / "mytasks.example.py"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

ENV_NAME = re.compile(r"\bMUTITASK_[A-Z0-9_]+\b")
SECRET_NAME = re.compile(r"PASSWORD|_URL$")  # settings that may carry a password
SHUTDOWN_GRACE = next(s for s in settings.SETTINGS if s.name == "shutdown_grace")
KUBERNETES_GRACE_DEFAULT = 30.0  # terminationGracePeriodSeconds when a pod names none
COMPOSE_GRACE_DEFAULT = 10.0  # stop_grace_period when a service names none
SCALER_PATH = "/api/scaler"
VALUE_LOCATION = re.compile(r"backlog|channels\.(\d+)\.backlog")


class Refused(Exception):
    """A command the code would not run as written: why."""


# -- what the code provides ---------------------------------------------------------------------
class _Answering(dict[str, str]):
    """An environment that answers every name with a token naming it, and notes each name asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def get(self, key: str, default: Any = None) -> str:  # type: ignore[override]
        self.asked.append(key)
        return f"<{key}>"

    def __getitem__(self, key: str) -> str:
        return self.get(key)

    def __contains__(self, key: object) -> bool:
        self.asked.append(str(key))
        return True


def web_env() -> dict[str, str]:
    """The variables the web page reads, each with the field of ``WebConfig`` it fills."""
    answering = _Answering()
    with mock.patch.object(os, "environ", answering):
        config = web_app.WebConfig.from_environ()
    return {
        name: f.name
        for f in dataclasses.fields(config)
        for name in answering.asked
        if getattr(config, f.name) == f"<{name}>"
    }


def known_env_names() -> set[str]:
    return {s.env for s in settings.SETTINGS} | set(web_env())


def secret_env_names() -> set[str]:
    return {name for name in known_env_names() if SECRET_NAME.search(name)}


def console_scripts(distribution: str) -> set[str]:
    return {ep.name for ep in metadata.distribution(distribution).entry_points if ep.group == "console_scripts"}


# -- the files, parsed --------------------------------------------------------------------------
@dataclass
class Instruction:
    """One Dockerfile instruction, its continuation lines joined."""

    keyword: str
    value: str
    line: int


@dataclass
class Shipped:
    """Every deployment file, parsed; the tests below break copies of it."""

    dockerfile: list[Instruction]
    dockerignore: list[str]
    compose: dict[str, Any]
    compose_env: dict[str, str]
    kube: dict[str, list[dict[str, Any]]]  # file name: its documents
    texts: dict[str, str]  # file: its text, for the names it mentions (comments too)


def dockerfile_instructions(text: str) -> list[Instruction]:
    result: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):  # also inside a continued instruction, as Docker reads it
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, value = (pending + line).partition(" ")
        result.append(Instruction(keyword.upper(), value.strip(), start))
        pending = ""
    return result


def dotenv(text: str) -> dict[str, str]:
    """``NAME=value`` lines (a value may be quoted as sh quotes it), comments left out."""
    pairs = (line.partition("=") for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {name.strip(): " ".join(shlex.split(value)) for name, _, value in pairs}


def load() -> Shipped:
    kube_files = sorted(KUBERNETES.glob("*.yaml"))
    return Shipped(
        dockerfile=dockerfile_instructions(DOCKERFILE.read_text()),
        dockerignore=[
            line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()[:1] not in ("", "#")
        ],
        compose=yaml.safe_load(COMPOSE.read_text()),
        compose_env=dotenv(COMPOSE_ENV.read_text()),
        kube={p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None] for p in kube_files},
        texts={
            p.relative_to(ROOT).as_posix(): p.read_text()
            for p in (DOCKERFILE, DOCKERIGNORE, COMPOSE, COMPOSE_ENV, *kube_files)
        },
    )


# -- commands, as the code parses them ----------------------------------------------------------
@dataclass
class Command:
    kind: str  # "device" (a Celery worker of the package's app) or "web" (mutitask web)
    params: dict[str, Any]
    argv: list[str]


def parse_command(argv: list[str]) -> Command:
    if not argv:
        raise Refused("no command")
    if argv[0] == "celery":
        return _celery(argv)
    if argv[0] in PYPROJECT["project"]["scripts"]:
        return _mutitask(argv)
    raise Refused(f"{argv[0]!r} is neither Celery's command nor a console script of pyproject.toml")


def _celery(argv: list[str]) -> Command:
    if "celery" not in console_scripts("celery"):
        raise Refused("the celery distribution installs no `celery` command")
    global_args, sub, rest = _split_celery(argv[1:])
    try:
        ctx = celery_command.make_context("celery", list(global_args))
    except click.ClickException as exc:
        raise Refused(f"celery: {exc.format_message()}") from None
    try:
        app = find_app(ctx.params["app"]) if ctx.params.get("app") else None
    except Exception as exc:  # whatever Celery's own start-up would stop on
        raise Refused(f"celery -A {ctx.params['app']}: {exc!r}") from None
    if app is not package_app:
        raise Refused(f"celery -A {ctx.params.get('app')!r}: not the package's app (-A {package_app.main})")
    if sub != "worker":
        raise Refused(f"celery {sub}: a device is `celery worker`")
    ctx.obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    try:
        worker = celery_command.commands[sub].make_context(sub, list(rest), parent=ctx)
    except click.ClickException as exc:
        raise Refused(f"celery worker: {exc.format_message()}") from None
    return Command("device", dict(worker.params), argv)


def _split_celery(args: list[str]) -> tuple[list[str], str, list[str]]:
    """Celery's global options, its sub-command and that command's arguments."""
    valued = {
        opt
        for p in celery_command.params
        if isinstance(p, click.Option) and not p.is_flag and not p.count
        for opt in (*p.opts, *p.secondary_opts)
    }
    i = 0
    while i < len(args):
        if args[i] in celery_command.commands:
            return args[:i], args[i], args[i + 1 :]
        i += 2 if args[i] in valued else 1
    raise Refused(f"celery {' '.join(args)}: no sub-command")


def _mutitask(argv: list[str]) -> Command:
    module, _, function = PYPROJECT["project"]["scripts"][argv[0]].partition(":")
    if importlib.import_module(module) is not cli or not callable(getattr(cli, function, None)):
        raise Refused(f"{argv[0]}: pyproject.toml's script is not the CLI's {cli.__name__}:main")
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = cli.build_parser().parse_args(argv[1:])
    except SystemExit:
        raise Refused(f"{' '.join(argv)}: {errors.getvalue().strip().splitlines()[-1]}") from None
    if args.handler is not cli._web:
        raise Refused(f"{' '.join(argv)}: not the web page")
    return Command("web", vars(args), argv)


def option(argv: list[str], *names: str) -> str | None:
    """The value given to an option, as written (``-n X``, ``--hostname=X``)."""
    for i, token in enumerate(argv):
        if token in names and i + 1 < len(argv):
            return argv[i + 1]
        for name in names:
            if name.startswith("--") and token.startswith(name + "="):
                return token.partition("=")[2]
    return None


def systemd_device() -> Command:
    """The systemd unit's device command, its ${...} from deploy/mutitask.env.example."""
    text = re.sub(r"\\\n\s*", " ", SYSTEMD_DEVICE.read_text())
    line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    values = dotenv(SYSTEMD_ENV.read_text())
    line = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], line.removeprefix("ExecStart="))
    argv = shlex.split(line.replace("%%", "%").replace("%i", "1"))
    return parse_command([Path(argv[0]).name, *argv[1:]])


# -- containers, wherever they are declared ----------------------------------------------------
@dataclass
class Container:
    where: str
    argv: list[str]
    env: dict[str, str]  # what the process sees; a value from a Secret is a token naming it
    own_env: set[str]  # names set on the container itself (not from a ConfigMap or the image)
    secrets: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (Secret, key)
    ports: list[int] = field(default_factory=list)
    grace: float | None = None  # seconds the platform waits between SIGTERM and SIGKILL
    spec: dict[str, Any] = field(default_factory=dict)  # the container's own declaration


def image_env(shipped: Shipped) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in final_stage(shipped):
        if ins.keyword == "ENV":
            tokens = shlex.split(ins.value)
            pairs = [t.partition("=") for t in tokens] if "=" in tokens[0] else [(tokens[0], "", " ".join(tokens[1:]))]
            env |= {name: value for name, _, value in pairs}
    return env


def compose_value(value: Any) -> str:
    """A compose value as the container gets it: ``${X:-d}`` gives d, ``${X:?e}`` a token (compose
    refuses to start without X), a bare ``${X}`` nothing (compose would start with X empty)."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, operator, argument = m.group(1), m.group(2) or "", m.group(3) or ""
        return argument if operator.endswith("-") else f"<{name}>" if operator.endswith("?") else ""

    return re.sub(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}", one, str(value))


def compose_port(entry: Any) -> int:
    if isinstance(entry, dict):
        return int(entry["target"])
    return int(str(entry).rsplit(":", 1)[-1].split("/")[0])


def compose_duration(text: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"not a compose duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def compose_containers(shipped: Shipped) -> Iterator[tuple[str, dict[str, Any], Container]]:
    """The services built from the Dockerfile, as containers."""
    for name, service in shipped.compose.get("services", {}).items():
        if "build" not in service:
            continue
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        grace = compose_duration(str(service.get("stop_grace_period", f"{COMPOSE_GRACE_DEFAULT:g}s")))
        yield (
            name,
            service,
            Container(
                where=f"compose.yaml: {name}",
                argv=[str(a) for a in service.get("command") or []],
                env=image_env(shipped) | {k: compose_value(v) for k, v in environment.items()},
                own_env=set(environment),
                ports=[compose_port(p) for p in service.get("ports") or []],
                grace=grace,
                spec=service,
            ),
        )


def kube_docs(shipped: Shipped, kind: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    for file, docs in shipped.kube.items():
        for doc in docs:
            if kind is None or doc.get("kind") == kind:
                yield file, doc


def kube_env(shipped: Shipped, spec: dict[str, Any]) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    maps = {doc["metadata"]["name"]: doc.get("data") or {} for _, doc in kube_docs(shipped, "ConfigMap")}
    env = dict(image_env(shipped))
    secrets: dict[str, tuple[str, str]] = {}
    for source in spec.get("envFrom") or []:
        env |= maps.get(source.get("configMapRef", {}).get("name"), {})
    for item in spec.get("env") or []:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            secrets[item["name"]] = (ref["name"], ref["key"])
            env[item["name"]] = f"<secret {ref['name']}/{ref['key']}>"
        else:
            env[item["name"]] = str(item.get("value", ""))
    return env, secrets


def kube_containers(shipped: Shipped) -> Iterator[tuple[str, dict[str, Any], Container]]:
    """Every container of every Deployment, with the pod's grace period."""
    for file, doc in kube_docs(shipped, "Deployment"):
        pod = doc["spec"]["template"]["spec"]
        for spec in pod.get("containers", []):
            env, secrets = kube_env(shipped, spec)
            yield (
                file,
                doc,
                Container(
                    where=f"deploy/kubernetes/{file}: {doc['metadata']['name']}/{spec.get('name')}",
                    argv=[str(a) for a in spec.get("command") or spec.get("args") or []],
                    env=env,
                    own_env={item["name"] for item in spec.get("env") or []},
                    secrets=secrets,
                    ports=[int(p["containerPort"]) for p in spec.get("ports") or []],
                    grace=float(pod.get("terminationGracePeriodSeconds", KUBERNETES_GRACE_DEFAULT)),
                    spec=spec,
                ),
            )


def image_container(shipped: Shipped) -> Container:
    cmd = next((ins for ins in reversed(final_stage(shipped)) if ins.keyword == "CMD"), None)
    return Container(where="Dockerfile CMD", argv=exec_form(cmd), env=image_env(shipped), own_env=set())


def all_containers(shipped: Shipped) -> list[Container]:
    return [
        image_container(shipped),
        *(c for _, _, c in compose_containers(shipped)),
        *(c for _, _, c in kube_containers(shipped)),
    ]


def command_of(container: Container) -> Command | None:
    try:
        return parse_command(container.argv)
    except Refused:
        return None


def grace_of(container: Container) -> float | None:
    """The device's MUTITASK_SHUTDOWN_GRACE, when set on the container itself."""
    if SHUTDOWN_GRACE.env not in container.own_env:
        return None
    return float(SHUTDOWN_GRACE.parse(container.env[SHUTDOWN_GRACE.env]))


# -- the Dockerfile -----------------------------------------------------------------------------
def stages(shipped: Shipped) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in shipped.dockerfile:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def final_stage(shipped: Shipped) -> list[Instruction]:
    return (stages(shipped) or [[]])[-1]


def exec_form(ins: Instruction | None) -> list[str]:
    """An ENTRYPOINT's or CMD's JSON form (a shell form would put sh, not the command, as the
    process that gets the stop signal)."""
    if ins is None:
        return []
    try:
        value = json.loads(ins.value)
    except json.JSONDecodeError:
        return ["<shell form>", ins.value]
    return [str(v) for v in value] if isinstance(value, list) else ["<shell form>", ins.value]


def apt_packages(stage: list[Instruction]) -> set[str]:
    packages: set[str] = set()
    for ins in stage:
        if ins.keyword == "RUN" and "apt-get install" in ins.value:
            tokens = shlex.split(ins.value)
            after = tokens[tokens.index("install") + 1 :]
            for token in after:
                if token in ("&&", ";", "||"):
                    break
                if not token.startswith("-"):
                    packages.add(token)
    return packages


def check_base_images(shipped: Shipped) -> list[str]:
    problems = []
    wanted = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for stage in stages(shipped):
        image = stage[0].value.split()[0]
        m = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim(?:-\w+)?", image)
        if m is None:
            problems.append(f"Dockerfile line {stage[0].line}: FROM {image}: not an official python slim image")
        elif m.group(1) not in wanted:
            problems.append(f"Dockerfile: FROM {image}: Python {m.group(1)} is not {wanted} (pyproject.toml)")
    return problems or ([] if stages(shipped) else ["Dockerfile: no FROM"])


def check_runtime(shipped: Shipped) -> list[str]:
    """The final stage: its user, stop signal, entrypoint and command."""
    stage = final_stage(shipped)
    last = {ins.keyword: ins for ins in stage}
    problems = []
    user = last["USER"].value.split(":")[0] if "USER" in last else "root"
    if user in ("root", "0"):
        problems.append(f"Dockerfile: the image runs as {user}, not a user of its own")
    if "STOPSIGNAL" not in last or last["STOPSIGNAL"].value not in ("SIGTERM", "15"):
        problems.append("Dockerfile: STOPSIGNAL is not SIGTERM (Celery's warm shutdown)")
    entrypoint = exec_form(last.get("ENTRYPOINT"))
    if entrypoint and Path(entrypoint[0]).name not in apt_packages(stage):
        problems.append(f"Dockerfile: ENTRYPOINT {entrypoint[0]} is not installed by the final stage's apt-get")
    command = command_of(image_container(shipped))
    if command is None or command.kind != "device":
        problems.append(f"Dockerfile: CMD {exec_form(last.get('CMD'))} is not a device's command")
    return problems


def check_install(shipped: Shipped) -> list[str]:
    """`pip install .` with extras the package has, from a build context the .dockerignore lets through."""
    problems = []
    targets = [
        token
        for ins in shipped.dockerfile
        if ins.keyword == "RUN" and re.search(r"\bpip install\b", ins.value)
        for token in shlex.split(ins.value.split("pip install", 1)[1])
        if not token.startswith("-")
    ]
    if not any(t == "." or t.startswith(".[") for t in targets):
        problems.append(f"Dockerfile: installs {targets}, not the package from the repository (pip install .)")
    for target in targets:
        extras = set(re.findall(r"[\w-]+", target.partition("[")[2]))
        if extras - set(PYPROJECT["project"].get("optional-dependencies", {})):
            problems.append(f"Dockerfile: pip install {target}: no such extra in pyproject.toml")
    copied = {
        src.rstrip("/")
        for ins in shipped.dockerfile
        if ins.keyword == "COPY" and "--from" not in ins.value
        for src in [t for t in shlex.split(ins.value) if not t.startswith("--")][:-1]
    }
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], *packages()}
    problems += [f"Dockerfile: does not COPY {n}, which pip install . needs" for n in sorted(needed - copied)]
    return problems + check_dockerignore(shipped, copied)


def packages() -> set[str]:
    """The top-level packages setuptools finds (pyproject.toml's include patterns)."""
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    found = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    return {name for name in found if any(re.fullmatch(pat.replace("*", ".*"), name) for pat in patterns)}


def check_dockerignore(shipped: Shipped, copied: set[str]) -> list[str]:
    """An allow-list: everything out (no .git, .venv or .env), then back in only what is copied."""
    problems = []
    if not shipped.dockerignore or shipped.dockerignore[0] != "*":
        problems.append(".dockerignore: does not start with '*' (leave everything out, then let in)")
    let_in = {line[1:].rstrip("/") for line in shipped.dockerignore if line.startswith("!")}
    problems += [
        f".dockerignore: does not let in {src}, which the Dockerfile copies" for src in sorted(copied - let_in)
    ]
    return problems


def check_no_secret_in_image(shipped: Shipped) -> list[str]:
    problems = []
    for ins in shipped.dockerfile:
        if ins.keyword in ("ENV", "ARG"):
            names = {t.partition("=")[0] for t in shlex.split(ins.value)}
            problems += [
                f"Dockerfile line {ins.line}: {ins.keyword} {n} (a secret)" for n in names & secret_env_names()
            ]
        if re.search(r"://[^/\s:@]*:[^/\s@]+@", ins.value):
            problems.append(f"Dockerfile line {ins.line}: a URL with a password")
    return problems


def check_image(shipped: Shipped) -> list[str]:
    return (
        check_base_images(shipped) + check_runtime(shipped) + check_install(shipped) + check_no_secret_in_image(shipped)
    )


# -- names and commands ------------------------------------------------------------------------
def strings(node: Any) -> Iterator[str]:
    """Every key and value of a parsed YAML document, as text."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif node is not None:
        yield str(node)


def check_env_names(shipped: Shipped) -> list[str]:
    known = known_env_names()
    sources = {**shipped.texts, "compose.yaml (parsed)": "\n".join(strings(shipped.compose))}
    sources |= {f"deploy/kubernetes/{f} (parsed)": "\n".join(strings(d)) for f, d in shipped.kube.items()}
    sources["Dockerfile (parsed)"] = "\n".join(ins.value for ins in shipped.dockerfile)
    return [
        f"{where}: {name} is not a setting (settings.SETTINGS) nor a name the web page reads"
        for where, text in sources.items()
        for name in sorted(set(ENV_NAME.findall(text)) - known)
    ]


def check_commands(shipped: Shipped) -> list[str]:
    problems = []
    for container in all_containers(shipped):
        try:
            command = parse_command(container.argv)
        except Refused as exc:
            problems.append(f"{container.where}: {exc}")
            continue
        check = check_device if command.kind == "device" else check_web
        problems += [f"{container.where}: {p}" for p in check(shipped, container, command)]
    return problems


def check_device(shipped: Shipped, container: Container, command: Command) -> list[str]:
    problems = []
    name = option(command.argv, "-n", "--hostname") or ""
    if "%h" not in name:
        problems.append(f"device name {name!r} is not its host's (%h): a second replica would be refused (exit 5)")
    unit = systemd_device().params
    for param in ("pool", "without_mingle", "without_gossip"):
        if command.params[param] != unit[param]:
            problems.append(f"{param} {command.params[param]!r}, where the systemd unit has {unit[param]!r}")
    channels = set()
    for queue in command.params["queues"] or []:
        m = re.fullmatch(rf"{keys.QUEUE_PREFIX}(\d+)", queue)
        if m is None:
            problems.append(f"-Q {queue}: not a channel's queue ({keys.queue(1)}, ...)")
        else:
            channels.add(int(m.group(1)))
    for module in command.params["include"] or []:
        if module not in TASK_MODULES:
            problems.append(f"-I {module}: no such task module shipped ({', '.join(TASK_MODULES)})")
        elif channels - registered(TASK_MODULES[module]):
            problems.append(
                f"-Q channels {sorted(channels)}: {module} registers {sorted(registered(TASK_MODULES[module]))}"
            )
    return problems


def registered(module: Path) -> set[int]:
    """The channels a task module registers (register_channel(N, ...))."""
    return {
        node.args[0].value
        for node in ast.walk(ast.parse(module.read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", None)) == "register_channel"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def check_web(shipped: Shipped, container: Container, command: Command) -> list[str]:
    problems = []
    with mock.patch.object(os, "environ", dict(container.env)):
        config = web_app.WebConfig.from_environ(command.params["host"], command.params["port"])
    try:
        web_app.check_listen(config)
    except ConfigurationError as exc:
        problems.append(f"mutitask web would refuse to start: {exc}")
    port = command.params["port"]
    exposed = {
        int(p.split("/")[0]) for ins in final_stage(shipped) if ins.keyword == "EXPOSE" for p in ins.value.split()
    }
    if port not in exposed:
        problems.append(f"--port {port}, where the Dockerfile exposes {sorted(exposed)}")
    if container.where != "Dockerfile CMD" and container.ports != [port]:
        problems.append(f"--port {port}, where the container declares ports {container.ports}")
    return problems


# -- compose -----------------------------------------------------------------------------------
def check_compose(shipped: Shipped) -> list[str]:
    problems = check_compose_redis(shipped) + check_compose_interpolation(shipped)
    for name, service, container in compose_containers(shipped):
        problems += [f"compose.yaml: {name}: {p}" for p in check_compose_service(shipped, name, service, container)]
    return problems


def check_compose_service(shipped: Shipped, name: str, service: dict[str, Any], container: Container) -> list[str]:
    problems = []
    build = service["build"] if isinstance(service["build"], str) else service["build"].get("context", ".")
    if not (ROOT / build / "Dockerfile").is_file():
        problems.append(f"its build context {build} has no Dockerfile")
    if service.get("stop_signal") != "SIGTERM":
        problems.append(f"stop_signal is {service.get('stop_signal')!r}, not SIGTERM")
    if getattr(command_of(container), "kind", None) != "device":
        return problems
    if "container_name" in service or service.get("ports"):
        problems.append(f"a container_name or a published port: --scale {name}=N cannot run N of them")
    grace = grace_of(container)
    if grace is None or container.grace is None or container.grace <= grace:
        problems.append(f"stop_grace_period {container.grace} s is not above {SHUTDOWN_GRACE.env} {grace}")
    pythonpath = image_env(shipped).get("PYTHONPATH", "")
    mounts = [str(v).split(":")[1] for v in service.get("volumes") or [] if ":" in str(v)]
    if pythonpath not in mounts:
        problems.append(f"mounts {mounts}, not the image's PYTHONPATH {pythonpath} (where the task module is)")
    return problems


def check_compose_redis(shipped: Shipped) -> list[str]:
    problems = []
    redis = shipped.compose.get("services", {}).get("redis", {})
    if not re.fullmatch(r"redis:7\.\d+\.\d+(-\w+)?", str(redis.get("image"))):
        problems.append(f"compose.yaml: redis image {redis.get('image')!r} is not a pinned Redis 7")
    if not re.search(r"aclfile|requirepass", " ".join(strings(redis.get("command")))):
        problems.append("compose.yaml: redis starts with no password (no aclfile, no requirepass)")
    for name, _, container in compose_containers(shipped):
        url = str((container.spec.get("environment") or {}).get("MUTITASK_REDIS_URL", ""))
        password = re.match(r"rediss?://[^:@/]*:([^@]*)@", url)
        if password is None or not re.fullmatch(r"\$\{\w+[^}]*\}", password.group(1)):
            problems.append(f"compose.yaml: {name}: MUTITASK_REDIS_URL's password is not taken from .env")
    return problems


def check_compose_interpolation(shipped: Shipped) -> list[str]:
    """Every ${NAME} compose.yaml needs without a default is one .env (compose.env.example) gives."""
    needed = {
        m.group(1)
        for text in strings(shipped.compose)
        for m in re.finditer(r"(?<!\$)\$\{(\w+)(:?[-?])?", text)
        if not (m.group(2) or "").endswith("-")
    }
    return [f"compose.yaml: ${{{n}}} is not in {COMPOSE_ENV.name}" for n in sorted(needed - set(shipped.compose_env))]


# -- Kubernetes --------------------------------------------------------------------------------
def check_kubernetes(shipped: Shipped) -> list[str]:
    return check_kube_files(shipped) + check_kube_pods(shipped)


def check_kube_files(shipped: Shipped) -> list[str]:
    problems = []
    namespaces = {d["metadata"]["name"] for _, d in kube_docs(shipped, "Namespace")}
    for file, doc in kube_docs(shipped):
        if doc.get("kind") in ("Kustomization", "Namespace"):
            continue
        if not doc.get("apiVersion") or not doc.get("metadata", {}).get("name"):
            problems.append(f"deploy/kubernetes/{file}: a {doc.get('kind')} without apiVersion or name")
        elif doc["metadata"].get("namespace") not in namespaces:
            problems.append(f"deploy/kubernetes/{file}: {doc['metadata']['name']} is not in {sorted(namespaces)}")
    listed = {r for _, d in kube_docs(shipped, "Kustomization") for r in d.get("resources", [])}
    files = set(shipped.kube) - {"kustomization.yaml"}
    if listed != files:
        problems.append(f"deploy/kubernetes/kustomization.yaml lists {sorted(listed)}, the folder has {sorted(files)}")
    for file, doc in kube_docs(shipped, "ConfigMap"):
        leaked = set(doc.get("data") or {}) & secret_env_names()
        problems += [f"deploy/kubernetes/{file}: {name} in a ConfigMap, not a Secret" for name in sorted(leaked)]
    return problems


def check_kube_pods(shipped: Shipped) -> list[str]:
    problems = []
    for _, doc, container in kube_containers(shipped):
        where = container.where
        labels = doc["spec"]["template"]["metadata"].get("labels", {})
        if doc["spec"]["selector"].get("matchLabels", {}).items() - labels.items():
            problems.append(f"{where}: the Deployment's selector does not select its pods")
        if "command" in container.spec:
            problems.append(f"{where}: `command` replaces the image's entrypoint (tini): use `args`")
        plain = sorted(n for n in container.env.keys() & secret_env_names() if n not in container.secrets)
        problems += [f"{where}: {name} is not taken from a Secret" for name in plain]
        command = command_of(container)
        if command is not None and command.kind == "device":
            grace = grace_of(container)
            if grace is None or container.grace is None or container.grace <= grace:
                problems.append(
                    f"{where}: terminationGracePeriodSeconds {container.grace} is not above "
                    f"{SHUTDOWN_GRACE.env} {grace} set on the container"
                )
    return problems


# -- KEDA --------------------------------------------------------------------------------------
def web_service(shipped: Shipped, namespace: str, name: str) -> tuple[dict[str, Any], Container] | None:
    """The Service ``name`` in ``namespace`` and the web page's container it sends to."""
    for _, service in kube_docs(shipped, "Service"):
        if (service["metadata"]["name"], service["metadata"].get("namespace")) != (name, namespace):
            continue
        selector = service["spec"].get("selector", {}).items()
        for _, doc, container in kube_containers(shipped):
            command = command_of(container)
            if command and command.kind == "web" and selector <= doc["spec"]["template"]["metadata"]["labels"].items():
                return service, container
    return None


def check_web_services(shipped: Shipped) -> list[str]:
    """Every Service of the web page forwards its port to the page's --port."""
    problems = []
    for _, service in kube_docs(shipped, "Service"):
        found = web_service(shipped, service["metadata"].get("namespace"), service["metadata"]["name"])
        if found is None:
            problems.append(f"Service {service['metadata']['name']}: selects no web page")
            continue
        port = parse_command(found[1].argv).params["port"]
        named = {p.get("name"): p["containerPort"] for p in found[1].spec.get("ports") or []}
        for entry in service["spec"]["ports"]:
            target = named.get(entry.get("targetPort"), entry.get("targetPort", entry["port"]))
            if (entry["port"], target) != (port, port):
                problems.append(f"Service {service['metadata']['name']}: port {entry['port']} -> {target}, not {port}")
    return problems


def check_keda(shipped: Shipped) -> list[str]:
    problems = check_web_services(shipped)
    scaled = list(kube_docs(shipped, "ScaledObject"))
    if not scaled:
        return [*problems, "deploy/kubernetes: no KEDA ScaledObject"]
    for file, doc in scaled:
        problems += [
            f"deploy/kubernetes/{file}: ScaledObject {doc['metadata']['name']}: {p}" for p in check_scaled(shipped, doc)
        ]
    return problems


def check_scaled(shipped: Shipped, doc: dict[str, Any]) -> list[str]:
    spec, namespace = doc["spec"], doc["metadata"].get("namespace")
    problems = [] if doc.get("apiVersion") == "keda.sh/v1alpha1" else [f"apiVersion {doc.get('apiVersion')}"]
    target = spec["scaleTargetRef"]
    devices = [
        c
        for _, d, c in kube_containers(shipped)
        if (d["metadata"]["name"], d["metadata"].get("namespace")) == (target["name"], namespace)
        and target.get("kind", "Deployment") == "Deployment"
        and getattr(command_of(c), "kind", None) == "device"
    ]
    if not devices:
        return [*problems, f"scaleTargetRef {target['name']} is not a Deployment of devices in {namespace}"]
    grace = grace_of(devices[0]) or settings.Settings().shutdown_grace
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not 0 <= low <= high or high < 1:
        problems.append(f"minReplicaCount {low}, maxReplicaCount {high}: no room for a device")
    if spec.get("cooldownPeriod", 300) < grace:
        problems.append(
            f"cooldownPeriod {spec.get('cooldownPeriod')} is below the devices' {SHUTDOWN_GRACE.env} {grace}"
        )
    for trigger in spec.get("triggers", []):
        problems += check_trigger(shipped, namespace, trigger, parse_command(devices[0].argv))
    return problems


def check_trigger(shipped: Shipped, namespace: str, trigger: dict[str, Any], device: Command) -> list[str]:
    meta = trigger.get("metadata", {})
    if trigger.get("type") != "metrics-api":
        return [f"a {trigger.get('type')} trigger, not metrics-api on the web page"]
    problems = []
    location = VALUE_LOCATION.fullmatch(str(meta.get("valueLocation")))
    if location is None:
        problems.append(f"valueLocation {meta.get('valueLocation')!r}: not backlog nor channels.<n>.backlog")
    elif location.group(1) and keys.queue(int(location.group(1))) not in (device.params["queues"] or []):
        problems.append(f"valueLocation {location.group(0)}: the devices do not work that channel")
    if float(meta.get("targetValue", 0)) <= 0:
        problems.append(f"targetValue {meta.get('targetValue')!r}: not a number of tasks per device")
    url = urlsplit(str(meta.get("url")))
    service, ns, domain = ((url.hostname or "").split(".", 2) + ["", "", ""])[:3]
    found = web_service(shipped, ns, service)
    if url.path != SCALER_PATH or ns != namespace or domain not in ("svc", "svc.cluster.local") or found is None:
        return [
            *problems,
            f"url {meta.get('url')}: not http://<the web page's Service>.{namespace}.svc:<port>{SCALER_PATH}",
        ]
    if url.port not in [p["port"] for p in found[0]["spec"]["ports"]]:
        problems.append(f"url {meta.get('url')}: port {url.port} is not the Service's")
    return problems + check_trigger_login(shipped, namespace, trigger, found[1])


def check_trigger_login(shipped: Shipped, namespace: str, trigger: dict[str, Any], web: Container) -> list[str]:
    """KEDA logs in as the web page's user, from the Secret the page reads its login from."""
    fields = {f: name for name, f in web_env().items()}
    if web.env.get(fields["password"]) is None:
        return []  # the page asks for no login
    if trigger.get("metadata", {}).get("authMode") != "basic":
        return [f"the web page asks for a login ({fields['password']}), the trigger's authMode is not basic"]
    name = trigger.get("authenticationRef", {}).get("name")
    auth = next(
        (
            d
            for _, d in kube_docs(shipped, "TriggerAuthentication")
            if (d["metadata"]["name"], d["metadata"].get("namespace")) == (name, namespace)
        ),
        None,
    )
    if auth is None:
        return [f"authenticationRef {name!r}: no such TriggerAuthentication in {namespace}"]
    given = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"].get("secretTargetRef", [])}
    wanted = {"username": web.secrets.get(fields["user"]), "password": web.secrets.get(fields["password"])}
    return [
        f"TriggerAuthentication {name}: {parameter} from {given.get(parameter)}, the page's from {source}"
        for parameter, source in wanted.items()
        if source is None or given.get(parameter) != source
    ]


CHECKS: dict[str, Callable[[Shipped], list[str]]] = {
    "image": check_image,
    "env names": check_env_names,
    "commands": check_commands,
    "compose": check_compose,
    "kubernetes": check_kubernetes,
    "keda": check_keda,
}


def problems(shipped: Shipped) -> list[str]:
    return [p for check in CHECKS.values() for p in check(shipped)]


# -- the tests ---------------------------------------------------------------------------------
def test_what_the_checks_read_from_the_code() -> None:
    """The names and commands the checks compare against come from the code, and are there."""
    assert set(web_env().values()) >= {"user", "password"}
    assert SHUTDOWN_GRACE.env in known_env_names()
    assert {"MUTITASK_REDIS_URL", "MUTITASK_BROKER_URL"} <= secret_env_names()
    device = systemd_device()
    assert device.kind == "device" and device.params["queues"] == ["channel1"]
    assert registered(TASK_MODULES["mytasks"]) == {1, 2}
    shipped = load()
    kinds = sorted(c.kind for c in map(command_of, all_containers(shipped)) if c is not None)
    assert kinds == ["device", "device", "device", "web", "web"]  # the image, compose's two, Kubernetes' two
    assert {d.get("kind") for docs in shipped.kube.values() for d in docs} >= {
        "Deployment", "Service", "ConfigMap", "ScaledObject", "TriggerAuthentication", "Kustomization"
    }  # fmt: skip


@pytest.mark.parametrize("name", CHECKS)
def test_the_shipped_files_agree_with_the_code(name: str) -> None:
    assert CHECKS[name](load()) == []


def _kube(shipped: Shipped, kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in kube_docs(shipped, kind) if d["metadata"]["name"] == name)


def _pod(shipped: Shipped, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = _kube(shipped, "Deployment", name)["spec"]["template"]["spec"]
    return pod


def _args(shipped: Shipped, name: str) -> list[str]:
    args: list[str] = _pod(shipped, name)["containers"][0]["args"]
    return args


def _env(shipped: Shipped, name: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = _pod(shipped, name)["containers"][0]["env"]
    return env


def _trigger(shipped: Shipped) -> dict[str, Any]:
    trigger: dict[str, Any] = _kube(shipped, "ScaledObject", "mutitask-device")["spec"]["triggers"][0]
    return trigger


def _dockerfile(shipped: Shipped, keyword: str, value: str) -> None:
    """Put ``keyword value`` in place of the last such instruction."""
    ins = next(i for i in reversed(shipped.dockerfile) if i.keyword == keyword)
    ins.value = value


def _install(shipped: Shipped, target: str) -> None:
    """Have the Dockerfile pip install ``target`` instead of the package."""
    ins = next(i for i in shipped.dockerfile if "pip install ." in i.value)
    ins.value = ins.value.replace("pip install .", f"pip install {target}")


def _replace(items: list[str], old: str, new: str) -> None:
    items[items.index(old)] = new


BREAKAGES: dict[str, tuple[Callable[[Shipped], Any], str]] = {
    # What is broken: (how, words of the problem it must cause).
    "a setting misspelt in a ConfigMap": (
        lambda s: _kube(s, "ConfigMap", "mutitask-settings")["data"].update(MUTITASK_DEAD_AFTR="10"),
        "MUTITASK_DEAD_AFTR is not a setting",
    ),
    "a setting misspelt in compose": (
        lambda s: s.compose["services"]["device"]["environment"].update(MUTITASK_SHUTDOWN_GRACES="25"),
        "MUTITASK_SHUTDOWN_GRACES is not a setting",
    ),
    "the web password misspelt": (
        lambda s: _env(s, "mutitask-web")[2].update(name="MUTITASK_WEB_PASS"),
        "MUTITASK_WEB_PASS is not a setting",
    ),
    "a misspelt sub-command": (lambda s: _replace(_args(s, "mutitask-web"), "web", "webb"), "invalid choice: 'webb'"),
    "a console script that does not exist": (
        lambda s: _replace(_args(s, "mutitask-web"), "mutitask", "mutitask-web"),
        "neither Celery's command nor a console script",
    ),
    "another app": (
        lambda s: _replace(_args(s, "mutitask-device"), "mutitask_celery", "mutitask_celery.settings"),
        "celery -A mutitask_celery.settings",
    ),
    "an app that does not exist": (
        lambda s: _replace(_args(s, "mutitask-device"), "mutitask_celery", "mutitask"),
        "celery -A mutitask:",
    ),
    "a worker option misspelt": (lambda s: _replace(_args(s, "mutitask-device"), "threads", "thread"), "'thread'"),
    "a worker option that does not exist": (
        lambda s: _replace(_args(s, "mutitask-device"), "--without-gossip", "--without-gossips"),
        "No such option",
    ),
    "a fixed device name": (lambda s: _replace(_args(s, "mutitask-device"), "device@%h", "device1@node"), "%h"),
    "a pool other than the systemd unit's": (
        lambda s: _replace(s.compose["services"]["device"]["command"], "threads", "solo"),
        "where the systemd unit has",
    ),
    "a channel the task module does not register": (
        lambda s: _replace(_args(s, "mutitask-device"), "channel1,channel2", "channel1,channel3"),
        "mytasks registers [1, 2]",
    ),
    "a queue that is no channel's": (
        lambda s: _replace(_args(s, "mutitask-device"), "channel1,channel2", "celery"),
        "-Q celery",
    ),
    "the web page without its password": (
        lambda s: _env(s, "mutitask-web").pop(2),
        "refusing to serve the web page on 0.0.0.0 without a password",
    ),
    "a compose web password that may be empty": (
        lambda s: s.compose["services"]["web"]["environment"].update(MUTITASK_WEB_PASSWORD="${MUTITASK_WEB_PASSWORD}"),
        "without a password",
    ),
    "the web page on another port": (lambda s: _replace(_args(s, "mutitask-web"), "5566", "8080"), "--port 8080"),
    "a containerPort that is not --port": (
        lambda s: _pod(s, "mutitask-web")["containers"][0]["ports"][0].update(containerPort=8080),
        "declares ports [8080]",
    ),
    "a Service on another port": (
        lambda s: _kube(s, "Service", "mutitask-web")["spec"]["ports"][0].update(port=80),
        "port 80 -> 5566, not 5566",
    ),
    "a ScaledObject URL on another port": (
        lambda s: _trigger(s)["metadata"].update(url="http://mutitask-web.mutitask.svc:8080/api/scaler"),
        "port 8080",
    ),
    "a ScaledObject URL on another path": (
        lambda s: _trigger(s)["metadata"].update(url="http://mutitask-web.mutitask.svc:5566/api/overview"),
        "/api/overview: not http://",
    ),
    "a ScaledObject URL to another namespace": (
        lambda s: _trigger(s)["metadata"].update(url="http://mutitask-web.default.svc:5566/api/scaler"),
        "default.svc:5566/api/scaler: not http://",
    ),
    "compose publishing another port": (
        lambda s: s.compose["services"]["web"].update(ports=["127.0.0.1:8080:8080"]),
        "declares ports [8080]",
    ),
    "the image exposing another port": (lambda s: _dockerfile(s, "EXPOSE", "8080"), "exposes [8080]"),
    "a grace period below the device's": (
        lambda s: _pod(s, "mutitask-device").update(terminationGracePeriodSeconds=25),
        "terminationGracePeriodSeconds 25.0 is not above",
    ),
    "Kubernetes' default grace period below a longer device grace": (
        lambda s: (
            _pod(s, "mutitask-device").pop("terminationGracePeriodSeconds"),
            _env(s, "mutitask-device")[1].update(value="45"),
        ),
        "terminationGracePeriodSeconds 30.0 is not above",
    ),
    "the device's grace left to the ConfigMap": (
        lambda s: _env(s, "mutitask-device").pop(1),
        "set on the container",
    ),
    "a compose stop_grace_period below the device's": (
        lambda s: s.compose["services"]["device"].update(stop_grace_period="20s"),
        "stop_grace_period 20.0 s",
    ),
    "a compose stop signal other than SIGTERM": (
        lambda s: s.compose["services"]["device"].update(stop_signal="SIGINT"),
        "not SIGTERM",
    ),
    "an image stop signal other than SIGTERM": (lambda s: _dockerfile(s, "STOPSIGNAL", "SIGINT"), "STOPSIGNAL"),
    "a device that cannot be scaled": (
        lambda s: s.compose["services"]["device"].update(container_name="device"),
        "--scale device=N",
    ),
    "a device task module that is not mounted": (
        lambda s: s.compose["services"]["device"].update(volumes=[]),
        "PYTHONPATH",
    ),
    "an unpinned Redis": (lambda s: s.compose["services"]["redis"].update(image="redis:latest"), "pinned Redis 7"),
    "a Redis without a password": (
        lambda s: s.compose["services"]["redis"].update(command=["redis-server", "--appendonly", "yes"]),
        "no password",
    ),
    "a password written into compose": (
        lambda s: s.compose["services"]["device"]["environment"].update(
            MUTITASK_REDIS_URL="redis://mutitask:hunter2@redis:6379/0"
        ),
        "not taken from .env",
    ),
    "a compose variable .env does not give": (
        lambda s: s.compose_env.pop("REDIS_ADMIN_PASSWORD"),
        "${REDIS_ADMIN_PASSWORD} is not in",
    ),
    "the Redis URL in plain text": (
        lambda s: _env(s, "mutitask-device")[0].update(value="redis://mutitask:x@redis:6379/0", valueFrom=None),
        "MUTITASK_REDIS_URL is not taken from a Secret",
    ),
    "the Redis URL in a ConfigMap": (
        lambda s: _kube(s, "ConfigMap", "mutitask-settings")["data"].update(MUTITASK_REDIS_URL="redis://x"),
        "in a ConfigMap, not a Secret",
    ),
    "the entrypoint overridden": (
        lambda s: _pod(s, "mutitask-device")["containers"][0].update(command=["celery"]),
        "use `args`",
    ),
    "a selector that selects nothing": (
        lambda s: _kube(s, "Deployment", "mutitask-device")["spec"]["selector"]["matchLabels"].update(tier="x"),
        "does not select its pods",
    ),
    "a manifest kustomization.yaml leaves out": (
        lambda s: next(d for _, d in kube_docs(s, "Kustomization"))["resources"].pop(),
        "kustomization.yaml lists",
    ),
    "a manifest outside the namespace": (
        lambda s: _kube(s, "ConfigMap", "mutitask-settings")["metadata"].pop("namespace"),
        "is not in",
    ),
    "a ScaledObject for another Deployment": (
        lambda s: _kube(s, "ScaledObject", "mutitask-device")["spec"]["scaleTargetRef"].update(name="mutitask-web"),
        "is not a Deployment of devices",
    ),
    "a ScaledObject on a valueLocation /api/scaler has not": (
        lambda s: _trigger(s)["metadata"].update(valueLocation="tasks"),
        "valueLocation 'tasks'",
    ),
    "a ScaledObject on a channel the devices do not work": (
        lambda s: _trigger(s)["metadata"].update(valueLocation="channels.3.backlog"),
        "do not work that channel",
    ),
    "a ScaledObject that scales down before the grace": (
        lambda s: _kube(s, "ScaledObject", "mutitask-device")["spec"].update(cooldownPeriod=10),
        "cooldownPeriod 10",
    ),
    "a ScaledObject without a login": (lambda s: _trigger(s)["metadata"].pop("authMode"), "authMode is not basic"),
    "a TriggerAuthentication from another Secret": (
        lambda s: _kube(s, "TriggerAuthentication", "mutitask-web-login")["spec"]["secretTargetRef"][1].update(
            key="pass"
        ),
        "password from ('mutitask-web-login', 'pass')",
    ),
    "the image running as root": (lambda s: _dockerfile(s, "USER", "root"), "runs as root"),
    "an entrypoint the image does not install": (
        lambda s: _dockerfile(s, "ENTRYPOINT", '["/usr/bin/dumb-init", "--"]'),
        "dumb-init",
    ),
    "an image command in shell form": (
        lambda s: _dockerfile(s, "CMD", "celery -A mutitask_celery worker"),
        "not a device's command",
    ),
    "a base image that is not python slim": (
        lambda s: _dockerfile(s, "FROM", "ubuntu:24.04"),
        "not an official python slim image",
    ),
    "a Python older than the package needs": (
        lambda s: _dockerfile(s, "FROM", "python:3.9-slim-bookworm"),
        "Python 3.9",
    ),
    "an extra the package does not have": (
        lambda s: _install(s, ".[web]"),
        "pip install .[web]: no such extra",
    ),
    "the package from PyPI, not from the repository": (
        lambda s: _install(s, "mutitask_celery"),
        "not the package from the repository",
    ),
    "a package left out of the build": (
        lambda s: s.dockerfile.remove(next(i for i in s.dockerfile if i.value.startswith("Mutitask"))),
        "does not COPY Mutitask",
    ),
    "a .dockerignore that keeps out what is copied": (
        lambda s: s.dockerignore.remove("!README.md"),
        "does not let in README.md",
    ),
    "a .dockerignore that lets everything in": (lambda s: s.dockerignore.remove("*"), "does not start with '*'"),
    "a password baked into the image": (
        lambda s: s.dockerfile.insert(-2, Instruction("ENV", "MUTITASK_WEB_PASSWORD=hunter2", 0)),
        "ENV MUTITASK_WEB_PASSWORD (a secret)",
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_each_check_can_fail(breakage: str) -> None:
    shipped = copy.deepcopy(load())
    mutate, expected = BREAKAGES[breakage]
    mutate(shipped)
    found = problems(shipped)
    assert any(expected in p for p in found), f"{breakage}: no problem says {expected!r}; found {found}"
