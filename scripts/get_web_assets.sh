#!/usr/bin/env bash
# Fetches the charting library of the coordinator's run browser: uPlot (MIT, ~50 KB minified),
# pinned to one version and checked against its npm integrity hash, into
# services/coordinator/web/static/vendor/ (ignored by git; served with the page, no CDN at run
# time). Uses `npm pack` when npm is present, else Python's urllib against the npm registry;
# the tarball's sha512 is checked either way.
# Idempotent: does nothing when the pinned version is already there.
# Usage: scripts/get_web_assets.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.6.32
INTEGRITY="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
DEST=services/coordinator/web/static/vendor
STAMP="$DEST/.uplot-$VERSION"

log() { echo "[get_web_assets] $*"; }

if [ -f "$STAMP" ] && [ -f "$DEST/uPlot.iife.min.js" ] && [ -f "$DEST/uPlot.min.css" ]; then
  log "present: uPlot $VERSION"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tarball="$tmp/uplot-$VERSION.tgz"
PY=${PARROT_PYTHON:-python3}
if command -v npm >/dev/null 2>&1; then
  log "npm pack uplot@$VERSION"
  (cd "$tmp" && npm pack --silent "uplot@$VERSION" >/dev/null)
else  # no npm (a slim image): the same tarball from the registry
  log "downloading uplot-$VERSION.tgz from registry.npmjs.org"
  "$PY" -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
    "https://registry.npmjs.org/uplot/-/uplot-$VERSION.tgz" "$tarball"
fi
got=$("$PY" -c 'import base64, hashlib, sys; print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tarball")
if [ "$got" != "$INTEGRITY" ]; then
  log "error: uplot-$VERSION.tgz has integrity $got, expected $INTEGRITY" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$tmp"
mkdir -p "$DEST"
cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$DEST/"
cp "$tmp/package/LICENSE" "$DEST/uPlot.LICENSE"
rm -f "$DEST"/.uplot-*
touch "$STAMP"
log "installed uPlot $VERSION into $DEST ($(wc -c < "$DEST/uPlot.iife.min.js") bytes)"
