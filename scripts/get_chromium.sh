#!/usr/bin/env bash
# Installs Debian's `chromium` and `chromium-driver` packages for the tests that drive the
# coordinator's run browser in a real headless browser (tests/helpers/browser.py, with selenium).
# Idempotent: does nothing when both are already on PATH. Needs root (apt-get); when not root it
# prints a warning and exits 0, so setup goes on and the browser tests skip (outside CI).
# Usage: scripts/get_chromium.sh
set -euo pipefail

log() { echo "[get_chromium] $*"; }

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  log "present: $(chromium --version 2>/dev/null | head -n1); $(chromedriver --version 2>/dev/null | head -n1 | cut -d' ' -f1-2)"
  exit 0
fi

if [ "$(id -u)" != "0" ]; then
  log "warning: chromium / chromium-driver are not installed and this is not root; run as root:" >&2
  log "  apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver" >&2
  log "warning: the run browser's tests will skip (and fail in CI)" >&2
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  log "warning: no apt-get on this machine; install chromium and its chromedriver another way" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
log "installing Debian's chromium and chromium-driver packages"
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
log "installed: $(chromium --version 2>/dev/null | head -n1); $(chromedriver --version 2>/dev/null | head -n1 | cut -d' ' -f1-2)"
