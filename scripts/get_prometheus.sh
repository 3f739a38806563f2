#!/usr/bin/env bash
# Installs Debian's `prometheus` package (the server and promtool) for the tests that run a
# real Prometheus on loopback (tests/helpers/prometheus.py) and check alert rules with promtool.
# Idempotent: does nothing when `prometheus` is already on PATH. Never leaves the Debian
# service running: the tests start their own Prometheus on a free loopback port, and a
# daemon on :9090 would only get in the way. Needs root (apt-get); when not root it prints
# a warning and exits 0, so setup goes on and the Prometheus tests skip (outside CI).
# Usage: scripts/get_prometheus.sh
set -euo pipefail

log() { echo "[get_prometheus] $*"; }

if command -v prometheus >/dev/null 2>&1; then
  log "present: $(prometheus --version 2>&1 | head -n1)"
  exit 0
fi

if [ "$(id -u)" != "0" ]; then
  log "warning: prometheus is not installed and this is not root; run as root:" >&2
  log "  apt-get update && apt-get install -y --no-install-recommends prometheus" >&2
  log "warning: the Prometheus scrape tests will skip (and fail in CI)" >&2
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  log "warning: no apt-get on this machine; install prometheus (v2.x) another way" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive

# Keep the package's postinst from starting its daemon: invoke-rc.d and deb-systemd-invoke
# ask /usr/sbin/policy-rc.d first, and exit code 101 means "action forbidden". An existing
# policy (Docker images ship one) is left as it is; one we create is removed on exit.
POLICY=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# temporary, from scripts/get_prometheus.sh: start no services during install\nexit 101\n' > "$POLICY"
  chmod 755 "$POLICY"
  created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

log "installing Debian's prometheus package"
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# Belt and braces: if a daemon got started anyway (a policy that allows it), stop it and
# keep it from starting at boot.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
  /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi

log "installed: $(prometheus --version 2>&1 | head -n1)"
log "promtool: $(promtool --version 2>&1 | head -n1)"
