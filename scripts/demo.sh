#!/usr/bin/env bash
# The demo: set everything up, start a private redis-server on a free port, run the
# seed's two examples (a server and two devices each), then stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh examples

port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
workdir=$(mktemp -d -t mutitask-demo-redis.XXXXXX)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$workdir" \
  --logfile "$workdir/redis.log" &
redis_pid=$!
cleanup() { kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; rm -rf "$workdir"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

export MUTITASK_REDIS_URL="redis://127.0.0.1:${port}/0"
for _ in $(seq 1 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
echo "demo: private redis-server on ${MUTITASK_REDIS_URL}"
.venv/bin/python examples/run_demo.py
