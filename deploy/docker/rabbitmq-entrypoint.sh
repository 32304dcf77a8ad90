#!/bin/bash
# Entrypoint of local/statusek-rabbitmq: runs the broker in the foreground as user rabbitmq.
# Like the official image it honours RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS / RABBITMQ_DEFAULT_VHOST
# (the broker creates them only on first boot and only when no definitions are loaded at boot).
set -euo pipefail

if [ "${1:-}" = rabbitmq-server ]; then
  if [ "$(id -u)" = 0 ]; then
    # A fresh volume or bind mount may belong to root.
    find /var/lib/rabbitmq /var/log/rabbitmq /etc/rabbitmq/conf.d \! -user rabbitmq -exec chown rabbitmq:rabbitmq '{}' +
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$0" "$@"
  fi
  defaults=/etc/rabbitmq/conf.d/20-default-user.conf
  : >"$defaults"
  [ -z "${RABBITMQ_DEFAULT_USER:-}" ] || echo "default_user = $RABBITMQ_DEFAULT_USER" >>"$defaults"
  [ -z "${RABBITMQ_DEFAULT_PASS:-}" ] || echo "default_pass = $RABBITMQ_DEFAULT_PASS" >>"$defaults"
  [ -z "${RABBITMQ_DEFAULT_VHOST:-}" ] || echo "default_vhost = $RABBITMQ_DEFAULT_VHOST" >>"$defaults"
  cd /var/lib/rabbitmq
  # Debian's /usr/sbin/rabbitmq-server wrapper would redirect the logs to files: call the real script,
  # which stops the broker cleanly on SIGTERM.
  shift
  exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec "$@"
