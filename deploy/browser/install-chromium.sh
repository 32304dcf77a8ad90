#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (tests/browser/); does nothing when it is there.
# playwright drives it through executable_path: `playwright install` downloads are not used.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
  chromium --version
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-chromium.sh: run as root (apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
chromium --version
