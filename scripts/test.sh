#!/usr/bin/env bash
# The test command: set everything up, run ruff and mypy, then the whole suite. The
# tests start their own redis-server on a free port; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
bash scripts/rabbitmq.sh  # the end-to-end tests also run with RabbitMQ as the broker
# Habits first: lint everything, type-check the package strictly (pyproject.toml says what).
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest "$@"
