#!/usr/bin/env bash
# Make sure RabbitMQ answers on 127.0.0.1:5672 (guest/guest), the second broker the
# tests run on: install rabbitmq-server with apt when it is missing, start it when it
# does not answer, wait until it does. Returns at once when it already answers.
# The tests make their own vhost (mutitask-test-*) and delete it: the default vhost
# and its queues are never touched.
set -euo pipefail
host=127.0.0.1
port=5672
wait_for="${MUTITASK_RABBITMQ_WAIT:-120}"  # seconds a cold start may take

answers() { timeout 2 bash -c ": </dev/tcp/$host/$port" 2>/dev/null; }
answers && exit 0

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "rabbitmq: installing rabbitmq-server with apt-get"
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
if ! answers; then  # the package's own start may already be on its way: give it a moment
  sleep 1
fi
if ! answers; then
  echo "rabbitmq: starting rabbitmq-server"
  # No init system on CI machines: -detached is what starts it there; service is the fallback.
  sudo_ rabbitmq-server -detached 2>/dev/null || sudo_ service rabbitmq-server start >/dev/null 2>&1 || true
fi
deadline=$((SECONDS + wait_for))
until answers; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "rabbitmq: RabbitMQ did not answer on $host:$port within ${wait_for}s" >&2
    exit 1
  fi
  sleep 1
done
# The port opens near the end of the boot; await_startup waits for the rest.
timeout "$wait_for" rabbitmqctl -q await_startup >/dev/null 2>&1 || true
echo "rabbitmq: answering on $host:$port"
