"""Where a training step's time goes, and what sample workers (``ep2p-loc train --workers``) change.

Per frame of a drive (the held-out outdoor drive ``bench/eval_model.py`` caches; made if missing): the CPU work
that makes a sample (crop, voxels, IPR at the true pose, image) and its kNN graph, against the network's forward
and backward pass on it. Then short training runs of the shipped model configuration, end to end, with samples
made in the training process (``--workers 0``, the previous behaviour) and by worker processes, in one run, as
steps per second and their ratio.

Why: on a GPU the network's part shrinks to a few tens of milliseconds while the sample's CPU work does not, so
without workers the GPU waits; this prints the split that decides how many workers a machine needs (the CPU
figures here; the same script on a CUDA machine gives the GPU's). On 2 cores the workers can only overlap one
sample with the step, so the ratio here is modest.

    .venv/bin/python bench/bench_train_step.py [--steps 12] [--workers 1 2] [--device cuda] [--sequence DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from eval_model import prepare_drive  # bench/ is the script's directory, so first on sys.path

    from ep2p_loc_ros.model.config import ModelConfig
    from ep2p_loc_ros.model.dataset import SequenceData
    from ep2p_loc_ros.model.network import EP2PLocNet
    from ep2p_loc_ros.model.train import TrainConfig, sample_graph, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "eval")
    ap.add_argument("--sequence", type=Path, help="a KITTI-layout sequence instead (e.g. a short one carried to a GPU)")
    ap.add_argument("--frames", type=int, default=6, help="frames timed for the split")
    ap.add_argument("--steps", type=int, default=12, help="training steps per run (the first two are not timed)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seq_dir = args.sequence or prepare_drive("outdoor", args.cache, ROOT / "models", args.cache / "bench_train")[0]
    config = ModelConfig()
    data = SequenceData(seq_dir, progress=False)
    net = EP2PLocNet(config).to(args.device)
    rng = np.random.default_rng(0)
    sample_ms, graph_ms, net_ms, points = [], [], [], []
    for i in np.linspace(0, len(data) - 1, args.frames).astype(int):
        t0 = time.perf_counter()
        s = data.sample(int(i), config, rng)
        t1 = time.perf_counter()
        graph = sample_graph(s, config)
        t2 = time.perf_counter()
        out = net.point_encoder.forward_graph(graph)
        (out.features.sum() + out.global_descriptor.sum()).backward()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t3 = time.perf_counter()
        sample_ms.append((t1 - t0) * 1e3)
        graph_ms.append((t2 - t1) * 1e3)
        net_ms.append((t3 - t2) * 1e3)
        points.append(len(s.points_local))
    med = statistics.median
    print(
        f"# Training step split, {platform.processor() or platform.machine()}, {args.threads} threads, {args.device}\n"
    )
    print(f"median over {args.frames} frames of {seq_dir.name} ({med(points):.0f} points a frame):\n")
    print("| sample (ms) | kNN graph (ms) | point encoder forward + backward (ms) | CPU work / network |")
    print("|---|---|---|---|")
    cpu = med(sample_ms) + med(graph_ms)
    print(f"| {med(sample_ms):.0f} | {med(graph_ms):.0f} | {med(net_ms):.0f} | {cpu / med(net_ms):.2f} |\n")

    print(f"End to end, `train` with the shipped configuration, {args.steps} steps of 2 frames (steps 3 on timed):\n")
    print("| workers | steps/s | ratio to 0 workers |")
    print("|---|---|---|")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for workers in [0, *args.workers]:
            cfg = TrainConfig(
                steps=args.steps, seed=0, workers=workers, log_every=1, checkpoint_every=10**6, pose_warmup=0
            )
            out = Path(tmp) / f"w{workers}"
            train([seq_dir], out, config, cfg, progress=False, device=args.device)
            log = (out.with_name(out.name + ".training") / "metrics.jsonl").read_text().splitlines()
            elapsed = [json.loads(line)["elapsed_s"] for line in log]
            rate = (len(elapsed) - 2) / (elapsed[-1] - elapsed[1])
            base = base or rate
            print(f"| {workers} | {rate:.2f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
