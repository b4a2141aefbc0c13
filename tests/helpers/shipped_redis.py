"""A redis-server started from the deployment's own files, ``deploy/redis/*``.

The test copies ``mutitask-redis.conf`` and ``users.acl`` as the guide installs them
and changes only what must differ on a test machine: the address (127.0.0.1), the
port (a free one, plain or TLS), the paths (certificates, the ACL file, ``dir``,
a log file) and the placeholder passwords. Every other line is the shipped one, so
a change to the shipped files is what the test runs. A directive the test expects to
adapt and does not find fails loudly: the files and the test move together.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent.parent
CONF = ROOT / "deploy" / "redis" / "mutitask-redis.conf"
ACL = ROOT / "deploy" / "redis" / "users.acl"
PLACEHOLDERS = {"CHANGE-ME-redis-password": "mutitask", "CHANGE-ME-admin-password": "admin"}  # -> user


def self_signed_certificate(cert: Path, key: Path) -> None:
    """A certificate for 127.0.0.1, valid a day, that is its own CA (``openssl req -x509``)."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )


class ShippedRedis:
    """``deploy/redis/*`` on 127.0.0.1:``port``, files under ``workdir``; ``tls``: the TLS port only."""

    def __init__(self, workdir: Path, port: int, tls: bool) -> None:
        self.workdir, self.port, self.tls = workdir, port, tls
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "redis.log"
        self.passwords = {user: f"{user}-pw-{port}" for user in PLACEHOLDERS.values()}
        self.ca, self.cert, self.key = workdir / "ca.pem", workdir / "redis.pem", workdir / "redis.key"
        self._certificate()
        self.acl = workdir / "users.acl"
        acl = ACL.read_text()
        for placeholder, user in PLACEHOLDERS.items():
            acl = acl.replace(placeholder, self.passwords[user])
        self.acl.write_text(acl)
        self.acl.chmod(0o600)
        self.conf = workdir / "mutitask-redis.conf"
        self.conf.write_text(self._adapted(CONF.read_text()))
        self.proc: subprocess.Popen[bytes] | None = None

    def _certificate(self) -> None:
        """A self-signed certificate for 127.0.0.1 that is its own CA (the conf names all three files)."""
        self_signed_certificate(self.cert, self.key)
        self.ca.write_bytes(self.cert.read_bytes())

    def _adapted(self, text: str) -> str:
        values = {
            "bind": "127.0.0.1",
            "port": "0" if self.tls else str(self.port),
            "tls-port": str(self.port) if self.tls else "0",
            "tls-cert-file": str(self.cert),
            "tls-key-file": str(self.key),
            "tls-ca-cert-file": str(self.ca),
            "aclfile": str(self.acl),
            "dir": str(self.data),
        }
        for directive, value in values.items():
            text, n = re.subn(
                rf"^{re.escape(directive)} .*$", f"{directive} {value}", text, count=1, flags=re.MULTILINE
            )
            if n != 1:
                raise AssertionError(f"{CONF.name} has no '{directive}' line to adapt: update this helper")
        return text + f"\n# added by the test\nlogfile {self.log}\n"

    def url(self, user: str = "mutitask") -> str:
        auth = f"{user}:{self.passwords[user]}@"
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca}&ssl_cert_reqs=required"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, user: str = "mutitask") -> redis.Redis:
        return redis.Redis.from_url(self.url(user), decode_responses=True, socket_timeout=10)

    def start(self) -> ShippedRedis:
        self.proc = subprocess.Popen(
            ["redis-server", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        delay = 0.02
        while True:
            client = self.client()
            try:
                if client.ping():  # LOADING (BusyLoadingError) until the append-only file is read
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            finally:
                client.close()
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start from {self.conf}:\n{self.log_text()[-3000:]}")
            time.sleep(delay)  # polling with a deadline: redis-server has no readiness signal
            delay = min(delay * 2, 0.2)

    def stop(self) -> None:
        """SIGTERM: Redis's own clean shutdown (the append-only file is flushed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def restart(self) -> None:
        """As an operator would: ``SHUTDOWN`` as the admin user, then start it again."""
        admin = self.client("admin")
        try:
            admin.shutdown()
        except redis.ConnectionError:
            pass  # redis-py may see the connection close before it reads a reply
        finally:
            admin.close()
        assert self.proc is not None
        self.proc.wait(30)
        self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
