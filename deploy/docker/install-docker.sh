#!/usr/bin/env bash
# A Docker engine, Debian's docker-compose and debootstrap on this kind of machine; starts dockerd if needed.
set -euo pipefail

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v docker-compose >/dev/null; then
  echo "installing docker.io, docker-compose and debootstrap"
  # Package lists may be missing or stale on a fresh machine: update once if the install fails.
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q docker.io docker-compose debootstrap >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q docker.io docker-compose debootstrap >/dev/null; }
fi
if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info --format 'docker engine {{.ServerVersion}} is up'
