#!/usr/bin/env bash
# local/debian:bookworm made with debootstrap from the Debian mirror apt uses (no registry needed).
set -euo pipefail
IMAGE=${BASE_IMAGE:-local/debian:bookworm}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE exists"
  exit 0
fi
MIRROR=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
  | grep -oE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' | grep -oE 'https?://[^ ]+' | head -n1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
echo "debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >/dev/null
tar -C "$ROOT" -c . | docker import - "$IMAGE" >/dev/null
echo "$IMAGE built"
