#!/usr/bin/env bash
# Train the point encoder (and the rest) on a lent CUDA machine for a set time, from training packs carried there.
#
# Why: on 2 CPU cores a step with the point encoder unfrozen takes ~2.3 s (models/README.md, "Session 16"), so it
# has had ~5,000 steps in all; a GPU machine cannot make training worlds (no Open3D) and cannot take them in bulk
# (64 MiB may travel), but packs can travel: ~10 MB per outdoor world, ~4 MB indoors (`ep2p-loc pack-training`).
#
# Prepare here (packs live in the ignored .cache/, so name the folder in the device tool's `carry`):
#     for w in train_o1 train_o2 train_o3 train_i11 train_i12; do
#         ep2p-loc pack-training data/$w --out .cache/packs/$w.npz; done      # ~10 s a world, ~41 MB in all
# Run there, from the repository root, with carry [".cache/packs"] and a timeout above MINUTES + 2:
#     MINUTES=7 bash bench/device_train.sh
# What comes back under $OUT (at most 8 files): models_gpu/ (config.json, model.safetensors, image_encoder.onnx),
# models_gpu.training/ (checkpoint.json, checkpoint.safetensors, metrics.jsonl: `--resume` goes on from it) and
# device_train.md (this log). Then here: `ep2p-loc calibrate-covariance --model models_gpu ...` and
# `python bench/eval_model.py --model models_gpu` (see models/README.md).
#
# A dry run without a GPU: DEVICE=cpu MINUTES=0.5 WORKERS=1 OUT=/tmp/dt bash bench/device_train.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
OUT="${OUT:-/tmp/device_train}"
mkdir -p "$OUT"
LOG="$OUT/device_train.md"
PACKS="${PACKS:-.cache/packs}"
DEVICE="${DEVICE:-cuda}"
MINUTES="${MINUTES:-7}"
STEPS="${STEPS:-20000}"  # the cosine schedule's length; the time limit ends the run first
WORKERS="${WORKERS:-12}"  # sample makers: ~0.18 s of CPU a frame (bench/bench_train_step.py)
SEED="${SEED:-18}"
LR="${LR:-1e-4}"
shopt -s nullglob
packs=("$PACKS"/*.npz)
[ "${#packs[@]}" -gt 0 ] || { echo "no training packs in $PACKS: see this script's header" | tee "$LOG"; exit 2; }
{
    echo "# device_train.sh, $(date -u +%FT%TZ)"
    echo
    echo "packs: ${packs[*]}; device $DEVICE, $MINUTES min, schedule $STEPS steps, lr $LR, seed $SEED, $WORKERS workers"
    echo
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import torch, numpy, scipy, cv2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    echo
} 2>&1 | tee "$LOG"
set -x
"$PY" -m ep2p_loc_ros.cli train "${packs[@]}" --out "$OUT/models_gpu" --init-from models --device "$DEVICE" \
    --threads 4 --workers "$WORKERS" --steps "$STEPS" --time-limit "$MINUTES" --lr "$LR" --seed "$SEED" \
    --no-pose-loss --match-points 4096 --other-points 512 --photometric-jitter 0.2 --viewpoint-prior \
    --checkpoint-every 500 2>&1 | grep -v -E "it/s\]|s/it\]|step/s\]|s/step\]" | tail -n 40 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
set +x
"$PY" - "$OUT/models_gpu.training/metrics.jsonl" <<'EOF' 2>&1 | tee -a "$LOG"
"""Training patch accuracy and losses per tenth of the run, from its metrics log."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"\n{len(rows)} logged steps, last step {rows[-1]['step']}, {rows[-1]['elapsed_s']} s\n")
print("| steps | patch acc. | patch | pixel | retrieval |\n|---|---|---|---|---|")
n = max(1, len(rows) // 10)
for i in range(0, len(rows), n):
    w = rows[i : i + n]
    mean = {k: sum(r.get(k, 0.0) for r in w) / len(w) for k in ("patch_acc", "patch", "pixel", "retrieval")}
    print(f"| {w[0]['step']}-{w[-1]['step']} | {100 * mean['patch_acc']:.1f} % | {mean['patch']:.3f} "
          f"| {mean['pixel']:.3f} | {mean['retrieval']:.3f} |")
EOF
exit "$rc"
