# RabbitMQ from Debian's rabbitmq-server package, a drop-in for the official `rabbitmq:3-management`
# image as far as the compose stack and the tests use it (see rabbitmq-entrypoint.sh).
#   docker build -f deploy/docker/rabbitmq.Dockerfile -t local/statusek-rabbitmq:test deploy/docker
ARG BASE_IMAGE=local/debian:bookworm
FROM ${BASE_IMAGE}

# The base image lists only the main suite; security and point-release updates matter for a server.
# policy-rc.d keeps the package's maintainer scripts from starting a broker during the build.
# Documentation and translations are left out (dpkg path-exclude).
RUN set -eux; \
    printf '%s\n' 'deb http://deb.debian.org/debian bookworm-updates main' \
        'deb http://deb.debian.org/debian-security bookworm-security main' > /etc/apt/sources.list.d/updates.list; \
    printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-exclude=/usr/share/man/*' \
        'path-exclude=/usr/share/locale/*' > /etc/dpkg/dpkg.cfg.d/no-docs; \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server; \
    rm -f /usr/sbin/policy-rc.d; \
    apt-get clean; rm -rf /var/lib/apt/lists/* /var/log/apt/* /var/log/dpkg.log; \
    rabbitmq-plugins enable --offline rabbitmq_management rabbitmq_consistent_hash_exchange; \
    mkdir -p /etc/rabbitmq/conf.d; \
    rm -rf /var/lib/rabbitmq/mnesia /var/log/rabbitmq/*; \
    chown -R rabbitmq:rabbitmq /etc/rabbitmq/conf.d /var/lib/rabbitmq /var/log/rabbitmq

# The official image's defaults. A mounted /etc/rabbitmq/rabbitmq.conf is read before conf.d/, so these
# must stay settings the compose file does not change. (The engine's legacy builder has no heredocs.)
RUN printf '%s\n' 'loopback_users.guest = false' 'listeners.tcp.default = 5672' 'management.tcp.port = 15672' \
        > /etc/rabbitmq/conf.d/10-defaults.conf

COPY rabbitmq-entrypoint.sh /usr/local/bin/docker-entrypoint.sh

# Logs to stdout as the official image does; HOME holds the Erlang cookie rabbitmqctl needs.
ENV RABBITMQ_LOGS=- HOME=/var/lib/rabbitmq
EXPOSE 4369 5671 5672 15671 15672 25672
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["rabbitmq-server"]
