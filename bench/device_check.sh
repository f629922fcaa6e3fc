#!/usr/bin/env bash
# The GPU figures in one short run, for a CUDA machine without this repository's environment (the device machine
# a session may be lent: python3 with torch, scipy, onnxruntime and OpenCV, but no Open3D, ROS or PoseLib).
#
# Prepare here (once; .cache/ is ignored by git, so name it in the device tool's `carry`):
#     ep2p-loc sim --out .cache/device/drive --frames 6 --seed 900     # ~16 MB: what travels of a drive
# Run there, from the repository root:
#     bash bench/device_check.sh            # writes the tables to stdout and to $OUT/device_check.md if OUT is set
#
# It prints: IPR on the GPU against the CPU (bench_ipr.py --cuda --no-hpr, on the shipped KITTI scans), the
# image encoder in torch on the GPU against onnxruntime on the CPU (bench_image_encoder.py), and a training
# step's split and steps/s with and without sample workers on the GPU (bench_train_step.py --device cuda).
# About 3-5 minutes of device time; each part runs even when an earlier one failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
LOG="${OUT:-/tmp}/device_check.md"
DRIVE="${DRIVE:-.cache/device/drive}"
DEVICE="${DEVICE:-cuda}"  # DEVICE=cpu STEPS=4 WORKERS=1: a dry run of the script on a machine without a GPU
STEPS="${STEPS:-22}"
WORKERS="${WORKERS:-4 8 12}"
THREADS="$(nproc)"
status=0
run() {
    echo -e "\n### $*\n" | tee -a "$LOG"
    "$@" 2>&1 | grep -v -E "it/s\]|s/it\]" | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "(exit $rc)" | tee -a "$LOG"; status=1; }
}
: >"$LOG"
run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run "$PY" -c "import torch, numpy, scipy, onnxruntime; print(torch.__version__, torch.cuda.is_available(), numpy.__version__, scipy.__version__, onnxruntime.__version__, onnxruntime.get_available_providers())"
run "$PY" bench/bench_ipr.py --cuda --no-hpr --threads "$THREADS"
run "$PY" bench/bench_image_encoder.py
if [ -d "$DRIVE" ]; then
    run "$PY" bench/bench_train_step.py --device "$DEVICE" --sequence "$DRIVE" --threads 4 --workers $WORKERS --steps "$STEPS"
else
    echo "no drive at $DRIVE: see the header for how to make one here and carry it" | tee -a "$LOG"
    status=1
fi
exit $status
