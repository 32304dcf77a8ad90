#!/usr/bin/env bash
# Builds the local images in order: local/debian:bookworm (base-image.sh), local/statusek-rabbitmq:test,
# local/statusek-postgres:test and the worker local/statusek:test (deploy/Dockerfile). An image that
# exists is kept unless --force is given; naming images builds only those:
#
#   deploy/docker/build-images.sh [--force] [base] [rabbitmq] [postgres] [worker]
#
# No registry is reachable: every image starts from the debootstrap base, apt works inside builds,
# and the worker's wheels are built on the host (pip reaches the package index there).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=deploy/docker
BASE=local/debian:bookworm

force=false
wanted=()
for arg in "$@"; do
  case "$arg" in
    --force) force=true ;;
    base | rabbitmq | postgres | worker) wanted+=("$arg") ;;
    *) echo "usage: $0 [--force] [base|rabbitmq|postgres|worker]..." >&2; exit 2 ;;
  esac
done
[ ${#wanted[@]} -gt 0 ] || wanted=(base rabbitmq postgres worker)
want() { [[ " ${wanted[*]} " == *" $1 "* ]]; }

# The engine has only the legacy builder; saying so explicitly quietens nothing but avoids a buildx probe.
export DOCKER_BUILDKIT=0
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

exists() { docker image inspect "$1" >/dev/null 2>&1; }

report() {  # image, what happened
  local bytes
  bytes=$(docker image inspect -f '{{.Size}}' "$1")
  printf '%-32s %6d MB  %s\n' "$1" $(((bytes + 500000) / 1000000)) "$2"
}

build() {  # image, docker build arguments...
  local image=$1
  shift
  if ! docker build -t "$image" "$@" >"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    echo "building $image failed" >&2
    exit 1
  fi
}

skip() {  # image: true when it exists and --force was not given
  ! $force && exists "$1"
}

bash "$HERE/install-docker.sh" >/dev/null

if want base; then
  if skip "$BASE"; then
    report "$BASE" exists
  else
    $force && exists "$BASE" && docker image rm "$BASE" >/dev/null
    BASE_IMAGE=$BASE bash "$HERE/base-image.sh" >/dev/null
    report "$BASE" built
  fi
fi
exists "$BASE" || { echo "$BASE is missing: run $0 base" >&2; exit 1; }

for service in rabbitmq postgres; do
  want "$service" || continue
  image=local/statusek-$service:test
  if skip "$image"; then
    report "$image" exists
  else
    build "$image" --build-arg "BASE_IMAGE=$BASE" -f "$HERE/$service.Dockerfile" "$HERE"
    report "$image" built
  fi
done

if want worker; then
  image=local/statusek:test
  if [ ! -f deploy/Dockerfile ]; then
    echo "$image: deploy/Dockerfile is missing, not built" >&2
  elif skip "$image"; then
    report "$image" exists
  else
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
    # The context holds nothing but wheels/: statusek's wheel and every dependency's.
    ctx=$(mktemp -d)
    trap 'rm -f "$LOG"; rm -rf "$ctx"' EXIT
    # Dependencies exactly as locked (with their hashes), then statusek itself without dependencies.
    if ! { "$python" -m pip wheel -q --wheel-dir "$ctx/wheels" --require-hashes -r requirements.lock &&
      "$python" -m pip wheel -q --no-deps --wheel-dir "$ctx/wheels" "$ROOT"; } >"$LOG" 2>&1; then
      tail -n 40 "$LOG" >&2
      echo "pip wheel failed" >&2
      exit 1
    fi
    rm -rf "$ROOT/build"
    version=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
    revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    build "$image" -f deploy/Dockerfile --build-arg "BASE_IMAGE=$BASE" \
      --build-arg "VERSION=$version" --build-arg "REVISION=$revision" "$ctx"
    # The legacy builder leaves the builder stage behind as a dangling image.
    docker image prune -f --filter label=statusek.stage=builder >/dev/null
    report "$image" built
  fi
fi
