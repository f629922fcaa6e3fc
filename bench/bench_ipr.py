"""Benchmark IPR (``ep2p_loc_ros.ipr.visible_mask``) against Open3D's hidden point removal on KITTI points.

Prints markdown tables: time and agreement at 10k / 100k / 1M points (subsampled, or repeated with 2 cm
jitter, from a real KITTI scan), then on the full real scans. Both methods get the same points in the LiDAR
(= map) frame; HPR has no image frustum, so agreement is measured on the points inside the image.

IPR is timed first, before ``open3d`` is imported: with both imported, torch's OpenMP threads stall for tens of
milliseconds now and then (two OpenMP runtimes in one process), which would be measuring that, not IPR.

    .venv/bin/python bench/bench_ipr.py            # ~1-2 min on 2 cores
    .venv/bin/python bench/bench_ipr.py --quick    # 10k and 100k only, fewer repetitions
    python bench/bench_ipr.py --cuda --no-hpr       # on a CUDA machine without Open3D: IPR on CPU against CUDA
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ep2p_loc_ros.calib import read_kitti_object_calib, read_velodyne_bin  # noqa: E402
from ep2p_loc_ros.geometry import PinholeCamera, invert, transform_points  # noqa: E402
from ep2p_loc_ros.ipr import IPRConfig, visible_mask  # noqa: E402

KITTI = ROOT / "test" / "data" / "kitti_object"


def load_frame(i: int) -> tuple[np.ndarray, np.ndarray, PinholeCamera]:
    size = Image.open(KITTI / "image_2" / f"{i:06d}.png").size
    calib = read_kitti_object_calib(KITTI / "calib" / f"{i:06d}.txt", size)
    return read_velodyne_bin(KITTI / "velodyne" / f"{i:06d}.bin")[:, :3].copy(), calib.T_cam_velo, calib.camera


def resample(scan: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points from a scan: a random subset, or (n > len) copies jittered by 2 cm (a denser 'map')."""
    if n <= len(scan):
        return scan[rng.choice(len(scan), n, replace=False)]
    reps = -(-n // len(scan))
    dense = np.repeat(scan, reps, axis=0)[:n]
    return (dense + rng.normal(0.0, 0.02, dense.shape)).astype(np.float32)


def median_ms(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    out = fn()  # warm-up (and the result)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), out


def in_image(points: np.ndarray, T_cam_map: np.ndarray, camera: PinholeCamera) -> np.ndarray:
    return camera.project(transform_points(T_cam_map, points.astype(np.float64))).in_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k and 100k only, fewer repetitions")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: stable on a shared machine; 0: torch's choice)",
    )
    ap.add_argument("--frame", type=int, default=0, help="KITTI frame the sized point sets are drawn from")
    ap.add_argument("--cuda", action="store_true", help="also time IPR on the GPU (torch CUDA), against the CPU")
    ap.add_argument("--no-hpr", dest="hpr", action="store_false", help="skip Open3D's HPR (needs no open3d)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = IPRConfig()
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    ipr_reps = {10_000: 20, 100_000: 10, 1_000_000: 5} if not args.quick else {10_000: 10, 100_000: 5}
    hpr_reps = {10_000: 5, 100_000: 3, 1_000_000: 1} if not args.quick else {10_000: 3, 100_000: 1}

    rng = np.random.default_rng(0)
    scan, T, cam = load_frame(args.frame)
    sets = {n: resample(scan, n, rng) for n in sizes}
    frames = {i: load_frame(i) for i in range(3)}

    # Phase 1: IPR only (open3d not imported yet, see module docstring).
    ipr = {n: median_ms(lambda p=p: visible_mask(p, T, cam, cfg), ipr_reps[n]) for n, p in sets.items()}
    ipr_full = {i: median_ms(lambda f=f: visible_mask(f[0], f[1], f[2], cfg), 10) for i, f in frames.items()}
    batch = 8
    Ts = np.stack([T] * batch)
    ipr_batch = median_ms(lambda: visible_mask(sets[100_000], Ts, cam, cfg), 3 if args.quick else 5)[0]
    # the same masks from torch tensors (torch's ops: the path CUDA takes), against numpy's compiled kernel
    T_t = torch.from_numpy(T)
    sets_t = {n: torch.from_numpy(p) for n, p in sets.items()}
    ipr_torch = {n: median_ms(lambda p=p: visible_mask(p, T_t, cam, cfg), ipr_reps[n]) for n, p in sets_t.items()}
    batch_t = (torch.from_numpy(sets[100_000]), torch.from_numpy(Ts))
    ipr_batch_torch = median_ms(lambda: visible_mask(*batch_t, cam, cfg), 3 if args.quick else 5)[0]
    print("## IPR on the CPU: numpy points (compiled kernel) vs torch tensors (torch's ops), same masks\n")
    print("| points | poses | compiled ms | torch ms | torch / compiled | same mask |\n|---:|---:|---:|---:|---:|---|")
    for n in sets:
        same = np.array_equal(ipr[n][1], ipr_torch[n][1].numpy())
        c, t = ipr[n][0], ipr_torch[n][0]
        print(f"| {n:,} | 1 | {c:.1f} | {t:.1f} | {t / c:.1f}x | {same} |")
    print(f"| 100,000 | {batch} | {ipr_batch:.1f} | {ipr_batch_torch:.1f} | {ipr_batch_torch / ipr_batch:.1f}x | |\n")

    if args.cuda:
        print_cuda(sets, T, cam, cfg, ipr)
    if not args.hpr:
        print("| points | IPR ms (CPU) |\n|---:|---:|")
        for n in sets:
            print(f"| {n:,} | {ipr[n][0]:.1f} |")
        return

    # Phase 2: Open3D HPR, radius = 100 x the cloud's diameter (Open3D's own example uses this factor).
    import open3d as o3d

    def hpr(points: np.ndarray, T_cam_map: np.ndarray, reps: int) -> tuple[float, np.ndarray]:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
        centre = invert(T_cam_map)[:3, 3]
        radius = 100.0 * float(np.linalg.norm(points.max(axis=0) - points.min(axis=0)))

        def run() -> np.ndarray:
            keep = np.zeros(len(points), dtype=bool)
            keep[np.asarray(pcd.hidden_point_removal(centre, radius)[1], dtype=np.int64)] = True
            return keep

        return median_ms(run, reps)

    def row(label: str, points: np.ndarray, T_cam_map: np.ndarray, camera: PinholeCamera, ipr_res, reps: int) -> str:
        ipr_ms, ipr_mask = ipr_res
        hpr_ms, hpr_mask = hpr(points, T_cam_map, reps)
        inside = in_image(points, T_cam_map, camera)
        culled_ms, _ = hpr(points[inside], T_cam_map, reps)
        a, b = ipr_mask[inside], hpr_mask[inside]
        return (
            f"| {label} | {len(points):,} | {inside.sum():,} | {ipr_ms:.1f} | {hpr_ms:.0f} | {hpr_ms / ipr_ms:.0f}x "
            f"| {culled_ms:.0f} | {culled_ms / ipr_ms:.0f}x | {np.mean(a == b):.3f} | {a.mean():.3f} | {b.mean():.3f} |"
        )

    header = (
        "| points | N | in image | IPR ms | HPR ms | HPR / IPR | HPR ms (in-image input) | HPR(in-image) / IPR "
        "| agreement | IPR kept | HPR kept |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    print(
        f"## IPR vs Open3D hidden_point_removal (CPU: {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, open3d {o3d.__version__}, {platform.machine()})\n"
    )
    print(
        f"IPR config: kernel_size={cfg.kernel_size}, rel_threshold={cfg.rel_threshold}, downsample={cfg.downsample}. "
        "Times are medians (ms) of the repeated calls (IPR: numpy in, numpy mask out; HPR on 1M: one run). "
        "Agreement and kept shares are over the in-image points.\n"
    )
    print(f"### Sized point sets from KITTI object frame {args.frame:06d} (1M = scan repeated, 2 cm jitter)\n")
    print(header)
    for n, p in sets.items():
        print(row(f"{n // 1000}k" if n < 1_000_000 else "1M", p, T, cam, ipr[n], hpr_reps[n]), flush=True)
    print("\n### Full real KITTI scans (velodyne frame = map, T_cam_map = T_cam_velo)\n")
    print(header)
    for i, (p, T_i, cam_i) in frames.items():
        print(row(f"frame {i:06d}", p, T_i, cam_i, ipr_full[i], 3), flush=True)
    print(
        f"\nBatched: {batch} poses x 100k points in one call: {ipr_batch:.1f} ms "
        f"({ipr_batch / batch:.1f} ms per pose; single pose {ipr[100_000][0]:.1f} ms)."
    )


def print_cuda(sets: dict[int, np.ndarray], T: np.ndarray, cam: PinholeCamera, cfg: IPRConfig, ipr: dict) -> None:
    """IPR on the GPU: points already there (what a GPU pipeline holds) and numpy in / numpy out, against the CPU."""
    if not torch.cuda.is_available():
        raise SystemExit("--cuda: torch sees no CUDA device")

    def gpu_ms(fn: Callable[[], object], reps: int = 20) -> tuple[float, object]:
        def synced() -> object:
            out = fn()
            torch.cuda.synchronize()
            return out

        return median_ms(synced, reps)

    print(f"## IPR on {torch.cuda.get_device_name()} against the CPU ({torch.get_num_threads()} threads)\n")
    print("| points | CPU ms | CUDA ms (tensors on the GPU) | CUDA ms (numpy in / out) | CPU / CUDA | same mask |")
    print("|---:|---:|---:|---:|---:|---|")
    for n, p in sets.items():
        cpu_ms, cpu_mask = ipr[n]
        pts, pose = torch.from_numpy(p).cuda(), torch.from_numpy(T).cuda()
        on_gpu, mask = gpu_ms(lambda pts=pts, pose=pose: visible_mask(pts, pose, cam, cfg))
        round_trip, _ = gpu_ms(lambda p=p: visible_mask(p, T, cam, cfg, device="cuda"))
        same = np.mean(np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask) == cpu_mask)
        print(f"| {n:,} | {cpu_ms:.1f} | {on_gpu:.2f} | {round_trip:.2f} | {cpu_ms / on_gpu:.0f}x | {same:.4f} |")
    print()


if __name__ == "__main__":
    main()
