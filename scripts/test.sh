#!/usr/bin/env bash
# The test command: set everything up, then run the whole suite. The tests start
# their own redis-server on a free port; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec .venv/bin/python -m pytest "$@"
