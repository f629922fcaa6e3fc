#!/usr/bin/env bash
# Create or update the project's environment in .venv/ (Python 3.11) from nothing; idempotent.
# A second run with nothing changed only compares a fingerprint and exits in about a second.
#   EP2P_GPU=1  -> onnxruntime-gpu instead of onnxruntime (CUDA execution provider)
#   PYTHON=...  -> the interpreter to build the venv from (default: python3.11, else python3 if it is 3.11)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.ep2p-setup-fingerprint"
GPU="${EP2P_GPU:-0}"
if [ "$GPU" = "1" ]; then ORT="onnxruntime-gpu==1.31.1"; else ORT="onnxruntime==1.32.0"; fi

fingerprint() {
  { cat "$ROOT/requirements.txt" "$ROOT/constraints.txt" "$ROOT/requirements-tf2-build.txt" "$ROOT/setup.py" \
        "$ROOT/setup.cfg" "$ROOT/scripts/setup_env.sh" "$ROOT/scripts/build_tf2_msgs.sh" \
        "$ROOT"/tools/tf2_msgs/CMakeLists.txt "$ROOT"/tools/tf2_msgs/msg/*.msg; echo "$ORT"; } | sha256sum | cut -d' ' -f1
}
WANT=$(fingerprint)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi

# ---- system packages pip cannot provide: libusb (open3d), cmake + C/C++ compiler + make (tf2_msgs)
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || missing+=(libusb-1.0-0)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "setup: installing system packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "error: missing system packages: ${missing[*]}" >&2
    echo "       install them (Debian/Ubuntu: sudo apt-get install ${missing[*]}) and run this again" >&2
    exit 1
  fi
fi

# ---- Python 3.11 venv
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null; then PY=python3.11; else PY=python3; fi
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "error: Python 3.11 is required (the ROS 2 wheels are cp311); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/pip" --disable-pip-version-check -q)
# A current pip: the venv's bundled pip (23.x) falls back to the deprecated `setup.py develop` for -e installs.
"${PIP[@]}" install "pip==26.3" 2>&1 | grep -v "^WARNING: Location" || true
# Exactly one onnxruntime build may be present: drop the other one when switching.
if [ "$GPU" = "1" ]; then OTHER=onnxruntime; else OTHER=onnxruntime-gpu; fi
"$VENV/bin/pip" --disable-pip-version-check -q uninstall -y "$OTHER" >/dev/null 2>&1 || true

echo "setup: installing pinned Python packages (first run: about a minute)"
"${PIP[@]}" install -c "$ROOT/constraints.txt" -r "$ROOT/requirements.txt" "$ORT" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c 'import rclpy, torch, onnxruntime, cv2, poselib, open3d' \
  || { echo "error: the Python packages did not install correctly (see pip output above)" >&2; exit 1; }

VENV="$VENV" bash "$ROOT/scripts/build_tf2_msgs.sh" 2>&1 | grep -v "^WARNING: Location"
"${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT" >"$VENV/.ep2p-editable-install.log" 2>&1 \
  || { cat "$VENV/.ep2p-editable-install.log" >&2; echo "error: pip install -e . failed" >&2; exit 1; }
"$VENV/bin/ep2p-loc" --help >/dev/null || { echo "error: ep2p-loc did not install" >&2; exit 1; }

echo "$WANT" > "$STAMP"
echo "setup: done ($VENV)"
