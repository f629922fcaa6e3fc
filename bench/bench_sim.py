"""Synthetic sequence generation speed (``ep2p_loc_ros.sim``): frames/s for outdoor and indoor worlds.

Generates ``--frames`` frames of each kind into a temporary directory (the full writer: rendering, PNG and .bin
writing, atomic swap) and prints a markdown table: world set-up time (world, route, ray-casting scene), time
per frame split into camera render, LiDAR scan and writing (measured on the first frames), overall frames/s,
and the extrapolated time of a 500-frame outdoor sequence.

    .venv/bin/python bench/bench_sim.py                 # 60 frames each, ~1.5-2 min on 2 cores
    .venv/bin/python bench/bench_sim.py --frames 20 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ep2p_loc_ros.sim.writer import STREAM_FRAME, SimConfig, generate_sequence, setup_sequence  # noqa: E402


def split_ms(cfg: SimConfig, threads: int, n: int) -> tuple[float, float, float, float]:
    """Set-up (s), and median ms per frame of camera render, LiDAR scan and PNG + .bin writing."""
    import io

    from PIL import Image

    t0 = time.perf_counter()
    setup = setup_sequence(cfg, nthreads=threads)
    t_setup = time.perf_counter() - t0
    cam, lidar, write = [], [], []
    for i in range(min(n, cfg.frames)):
        t0 = time.perf_counter()
        frame = setup.camera.render(
            setup.tracer, setup.T_world_cam2(i), setup.world.lighting, np.random.default_rng([0, STREAM_FRAME, i, 0])
        )
        t1 = time.perf_counter()
        scan = setup.lidar.scan(setup.tracer, setup.T_world_velo(i), np.random.default_rng([0, STREAM_FRAME, i, 1]))
        t2 = time.perf_counter()
        Image.fromarray(frame.rgb).save(io.BytesIO(), format="PNG", compress_level=1)
        scan.astype("<f4").tobytes()
        t3 = time.perf_counter()
        cam.append(t1 - t0)
        lidar.append(t2 - t1)
        write.append(t3 - t2)
    return t_setup, *(1e3 * statistics.median(x) for x in (cam, lidar, write))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60, help="frames per kind (default: 60)")
    ap.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    ap.add_argument("--threads", type=int, default=0, help="ray-casting threads, 0: all cores (default: 0)")
    ap.add_argument("--split-frames", type=int, default=5, help="frames timed stage by stage (default: 5)")
    args = ap.parse_args()

    rows = []
    t500 = 0.0
    with tempfile.TemporaryDirectory(prefix="ep2p-bench-sim-") as tmp:
        for kind in ("outdoor", "indoor"):
            cfg = SimConfig(kind=kind, frames=args.frames, seed=args.seed)
            t_setup, cam_ms, lidar_ms, write_ms = split_ms(cfg, args.threads, args.split_frames)
            res = generate_sequence(Path(tmp) / kind, cfg, progress=False, nthreads=args.threads)
            size = sum(p.stat().st_size for p in res.path.rglob("*") if p.is_file()) / 2**20
            if kind == "outdoor":  # set-up once, then the steady per-frame rate
                t500 = t_setup + 500 * (res.seconds - t_setup) / res.frames
            rows.append(
                f"| {kind} | {res.triangles:,} | {t_setup:.2f} | {cam_ms:.0f} | {lidar_ms:.0f} | {write_ms:.0f} "
                f"| {res.frames} | {res.seconds:.1f} | {res.frames_per_s:.2f} | {size / res.frames:.2f} |"
            )
            print(f"{kind}: {res.frames} frames in {res.seconds:.1f} s", file=sys.stderr, flush=True)

    print(
        f"## Synthetic sequence generation ({os.cpu_count()} cores, {platform.machine()}, "
        f"ray-casting threads: {args.threads or 'all'})\n"
    )
    print(
        "| kind | triangles | set-up s | camera ms/frame | LiDAR ms/frame | write ms/frame | frames | total s "
        "| frames/s | MiB/frame |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(r)
    print(f"\nExtrapolated 500-frame outdoor sequence: {t500:.0f} s ({t500 / 60:.1f} min).")


if __name__ == "__main__":
    main()
