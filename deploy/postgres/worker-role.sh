#!/usr/bin/env bash
# Creates statusek's worker role on a fresh Postgres volume: mounted into /docker-entrypoint-initdb.d/
# by deploy/compose.yaml, run once by the entrypoint (the official image's or local/statusek-postgres')
# while it initialises the data directory, as POSTGRES_USER over the local socket.
#
#   STATUSEK_WORKER_DB_ROLE       the role (default statusek_worker)
#   STATUSEK_WORKER_DB_PASSWORD   its password (required)
#
# The role gets no privileges here: `statusek migrate --grant statusek_worker`, run as the owner by the
# compose `migrate` service, grants them (src/statusek/adapters/postgres/grants.sql).
# A volume initialised before this script existed needs the role made by hand, once:
#   docker compose exec postgres psql -U postgres -c "CREATE ROLE statusek_worker LOGIN PASSWORD '...'"
# The entrypoint may source this file rather than run it: no `exit`, no `set` here.

psql -v ON_ERROR_STOP=1 -X -q --no-password --username "${POSTGRES_USER:-postgres}" \
  --dbname "${POSTGRES_DB:-postgres}" \
  --set role="${STATUSEK_WORKER_DB_ROLE:-statusek_worker}" \
  --set password="${STATUSEK_WORKER_DB_PASSWORD:?set STATUSEK_WORKER_DB_PASSWORD for the worker role}" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
SQL
