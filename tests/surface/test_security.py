"""Safe defaults: TLS (rediss://) with a password from the environment, never printed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import ROOT, SCRIPTS
from helpers.processes import Processes
from helpers.shipped_redis import self_signed_certificate
from helpers.waits import wait_until

from mutitask_celery.tools.localredis import free_port

PASSWORD = "tls-s3cret-pw"


@pytest.fixture
def tls_redis(procs: Processes, tmp_path: Path) -> str:
    """A redis-server that speaks only TLS, with a self-signed certificate and a password."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (scripts/setup.sh installs it)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed_certificate(cert, key)
    port = free_port()
    procs.start(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        "redis-tls",
    )

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, 10, "the TLS redis-server")
    return f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={cert}&ssl_cert_reqs=required"


def test_a_run_over_tls_with_a_password_that_is_never_shown(procs: Processes, tls_redis: str) -> None:
    env = {"MUTITASK_REDIS_URL": tls_redis}
    device = procs.device(1, 1, "echo", env=env)
    server = procs.python(SCRIPTS / "server.py", "20", name="server", env=env)
    assert server.wait(120) == 0, procs.output(server)
    assert "channel 1: published 20, succeeded 20, failed 0" in procs.output(server)
    device.terminate()
    device.wait(15)
    for proc in (device, server):
        assert PASSWORD not in procs.output(proc)


def test_wrong_password_is_a_clear_error_within_seconds(procs: Processes, tls_redis: str) -> None:
    wrong = tls_redis.replace(PASSWORD, "not-the-password")
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "server.py"), "3"],
        capture_output=True,
        text=True,
        timeout=10,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MUTITASK_REDIS_URL": wrong},
    )
    assert out.returncode == 3 and "Traceback" not in out.stderr
    assert "refused the password" in out.stderr and "rediss://:***@127.0.0.1" in out.stderr
    assert "not-the-password" not in out.stderr + out.stdout


def test_plain_connection_to_a_tls_port_fails_clearly(procs: Processes, tls_redis: str) -> None:
    plain = tls_redis.replace("rediss://", "redis://").split("?")[0]
    out = subprocess.run(
        [sys.executable, "-m", "mutitask_celery", "failed", "count", "--redis-url", plain],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 3 and "Redis at redis://:***@127.0.0.1" in out.stderr
    assert PASSWORD not in out.stderr
