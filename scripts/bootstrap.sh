#!/usr/bin/env bash
# Idempotent setup of everything banana needs on a fresh Debian machine with Python 3.11:
# system packages (aarch64 cross toolchain, qemu-user, PoCL, lld, Chromium for the HTML report test, PostgreSQL for
# the multi-worker sweep test, clang-15 for the qemu-hexagon test driver), a project venv
# in .venv, the pinned Python dependencies, and the arm64 TVM runtime used to verify under qemu.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

apt_pkgs=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user lld pocl-opencl-icd
          ocl-icd-libopencl1 ocl-icd-opencl-dev clinfo chromium postgresql clang-15)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: apt-get install ${missing[*]}" >&2
  $sudo_cmd apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >&2
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if ! "$python" -c "import ensurepip, venv" >/dev/null 2>&1; then
  # Debian splits venv/ensurepip out of the interpreter package.
  ${sudo_cmd:-} apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive ${sudo_cmd:-} apt-get install -y -qq python3-venv >&2
fi
stamp=.venv/.banana-installed
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing Python dependencies into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0" >&2
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]" >&2
  touch "$stamp"
fi
# arm64 TVM runtime (wheels from PyPI) + the small C++ runner that executes artifacts under qemu.
.venv/bin/python -m banana.targets.arm64 --ensure >&2 || { echo "bootstrap: arm64 runtime setup failed" >&2; exit 1; }
