#!/usr/bin/env bash
# Start the local PostgreSQL and RabbitMQ if they are not running (with the management UI); wait until both answer.
set -euo pipefail

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
for _ in $(seq 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
pg_isready -h 127.0.0.1 -p 5432

if ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached
fi
rabbitmqctl -q await_startup --timeout 120
# The management UI is how operators look at dead letters (and what the browser test drives).
if ! rabbitmq-plugins -q list -e -m | grep -qx rabbitmq_management; then
  echo "enabling rabbitmq_management"
  rabbitmq-plugins -q enable rabbitmq_management >/dev/null
fi
# Several command partitions (STATUSEK_COMMAND_PARTITIONS > 1) route through a consistent-hash exchange.
if ! rabbitmq-plugins -q list -e -m | grep -qx rabbitmq_consistent_hash_exchange; then
  echo "enabling rabbitmq_consistent_hash_exchange"
  rabbitmq-plugins -q enable rabbitmq_consistent_hash_exchange >/dev/null
fi
# The shipped message size limit (deploy/rabbitmq/rabbitmq.conf): the local broker does not read that
# file, and the setting applies at once to channels opened afterwards.
max_message_size=$(sed -n 's/^max_message_size *= *\([0-9]*\) *$/\1/p' "$(dirname "$0")/rabbitmq/rabbitmq.conf")
rabbitmqctl -q eval "application:set_env(rabbit, max_message_size, ${max_message_size})." >/dev/null
echo "services are up"
