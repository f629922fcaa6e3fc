#!/usr/bin/env bash
# Generate and install tf2_msgs (TFMessage only) into a venv whose ROS 2 comes from PyPI wheels.
# The wheels ship no tf2_msgs; /tf and /tf_static need it. Sources: tools/tf2_msgs (COLCON_IGNOREd, so a
# real ROS workspace keeps its own tf2_msgs). Usage: VENV=/path/to/venv bash scripts/build_tf2_msgs.sh
set -euo pipefail
: "${VENV:?set VENV to the virtual environment}"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY="$VENV/bin/python"

if "$PY" -c 'import tf2_msgs.msg' 2>/dev/null; then
  echo "tf2_msgs: already importable"; exit 0
fi
echo "tf2_msgs: generating from $ROOT/tools/tf2_msgs"
# Build-time wheels (their metadata declares no dependencies, so all are listed).
"$VENV/bin/pip" install -q -c "$ROOT/constraints.txt" -r "$ROOT/requirements-tf2-build.txt"

# The wheels' *_rosidl_generator_pyExport.cmake files point at the wheel builder's Python; repoint them here.
PYINC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$PY" -c 'import numpy; print(numpy.get_include())')
if [ ! -f "$PYINC/Python.h" ]; then
  echo "error: $PYINC/Python.h is missing; install the Python headers (Debian: apt-get install python3-dev)" >&2
  exit 1
fi
grep -rl --include='*_rosidl_generator_pyExport.cmake' /opt/python/cp311-cp311 "$VENV/share" | xargs -r sed -i \
  -e "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g" \
  -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NPINC#g"

BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
if ! { cmake -S "$ROOT/tools/tf2_msgs" -B "$BUILD" -DPython3_EXECUTABLE="$PY" -DCMAKE_INSTALL_PREFIX="$VENV" \
         -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >"$BUILD/configure.log" 2>&1 \
       && cmake --build "$BUILD" -j"$(nproc)" >"$BUILD/build.log" 2>&1 \
       && cmake --install "$BUILD" >"$BUILD/install.log" 2>&1; }; then
  echo "error: building tf2_msgs failed; last lines of the logs:" >&2
  tail -n 20 "$BUILD"/*.log >&2
  exit 1
fi
"$PY" -c 'from tf2_msgs.msg import TFMessage; print("tf2_msgs: built,", TFMessage.__name__, "importable")'
