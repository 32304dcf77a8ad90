# PostgreSQL 15 from Debian's packages, a drop-in for the official `postgres` image as far as the
# compose stack and the tests use it (see postgres-entrypoint.sh).
#   docker build -f deploy/docker/postgres.Dockerfile -t local/statusek-postgres:test deploy/docker
ARG BASE_IMAGE=local/debian:bookworm
FROM ${BASE_IMAGE}

ENV PG_MAJOR=15
# The base image lists only the main suite; security and point-release updates matter for a server.
# The entrypoint makes the cluster in $PGDATA, so the package must not create Debian's 15/main.
# Documentation and translations are left out (dpkg path-exclude): they would be a sixth of the image.
RUN set -eux; \
    printf '%s\n' 'deb http://deb.debian.org/debian bookworm-updates main' \
        'deb http://deb.debian.org/debian-security bookworm-security main' > /etc/apt/sources.list.d/updates.list; \
    printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-exclude=/usr/share/man/*' \
        'path-exclude=/usr/share/locale/*' > /etc/dpkg/dpkg.cfg.d/no-docs; \
    mkdir -p /etc/postgresql-common/createcluster.d; \
    echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main-cluster.conf; \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "postgresql-$PG_MAJOR"; \
    rm -f /usr/sbin/policy-rc.d; \
    apt-get clean; rm -rf /var/lib/apt/lists/* /var/log/apt/* /var/log/dpkg.log; \
    sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "/usr/share/postgresql/$PG_MAJOR/postgresql.conf.sample"; \
    mkdir -p /var/run/postgresql /var/lib/postgresql/data /docker-entrypoint-initdb.d; \
    chown -R postgres:postgres /var/run/postgresql /var/lib/postgresql; \
    chmod 3777 /var/run/postgresql; chmod 700 /var/lib/postgresql/data

COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh

ENV PATH=/usr/lib/postgresql/$PG_MAJOR/bin:$PATH PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
EXPOSE 5432
# The official image stops with SIGINT (fast shutdown); the entrypoint turns SIGTERM into the same.
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
