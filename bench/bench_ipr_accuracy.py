"""How right is IPR? Precision/recall of the kept map points against exact ray-cast visibility, vs Open3D HPR.

On a synthetic outdoor and indoor sequence (generated into a temporary directory, or given with ``--sequence``),
the map is the voxel-fused scans of the whole sequence (centroids of 0.2 m voxels, as ``ep2p-loc build-map``
makes it), cropped to ``--radius`` metres around each evaluated frame's camera. The ground truth is exact:
each map point is snapped onto the world mesh (the surface sample it stands for: map points are noisy and
voxel-averaged, a few cm off their surface) and ray-cast from the true camera pose (``sim/visibility.py``).

Scored over the map points that project into the image (IPR gets the whole crop and only ever keeps those;
HPR gets just those points as input, plus the camera position): precision = visible kept / kept, recall =
visible kept / visible, summed over frames. A sweep over IPR's kernel size, relative depth threshold and
downsampling, and over HPR's radius (a multiple of the input's diameter), printed as one markdown table, with
the time per frame (median).

    .venv/bin/python bench/bench_ipr_accuracy.py                      # ~3-4 min on 2 cores (generation ~1.5)
    .venv/bin/python bench/bench_ipr_accuracy.py --frames 20 --stride 5
    .venv/bin/python bench/bench_ipr_accuracy.py --sequence SEQ_DIR   # any synthetic sequence (world_mesh.npz)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence  # noqa: E402
from ep2p_loc_ros.geometry import PinholeCamera, invert, transform_points  # noqa: E402
from ep2p_loc_ros.ipr import IPRConfig, visible_mask  # noqa: E402
from ep2p_loc_ros.map.builder import VoxelAccumulator  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ipr import median_ms  # noqa: E402  (one timing helper for both IPR benches)

KIND_RADIUS = {"outdoor": 80.0, "indoor": 30.0}  # map crop around the camera, m


@dataclass
class EvalFrame:
    near: np.ndarray  # (N, 3) float32 map points within the crop radius (world frame): what IPR gets
    inside: np.ndarray  # (N,) bool, projects into the image
    points: np.ndarray  # (M, 3) the points in the image (scored; what HPR gets)
    T_cam_world: np.ndarray
    centre: np.ndarray  # camera centre (world)
    visible: np.ndarray  # (M,) ground truth


@dataclass
class EvalSet:
    name: str
    camera: PinholeCamera
    frames: list[EvalFrame]
    map_points: int  # mean over frames, after the crop
    snap_median_m: float


def generate(kind: str, frames: int, seed: int, root: Path) -> Path:
    from ep2p_loc_ros.sim.writer import SimConfig, generate_sequence

    res = generate_sequence(root / kind, SimConfig(kind=kind, frames=frames, seed=seed), progress=False)
    print(f"generated {kind} seed {seed}: {frames} frames in {res.seconds:.0f} s", file=sys.stderr, flush=True)
    return res.path


def eval_set(seq_dir: Path, stride: int, voxel: float, radius: float | None) -> EvalSet:
    import json

    from ep2p_loc_ros.sim.visibility import as_tracer, snap_to_surface, visible_points

    seq = KittiOdometrySequence(seq_dir)
    kind = json.loads((seq_dir / "sim.json").read_text()).get("kind", "outdoor")
    radius = radius or KIND_RADIUS.get(kind, 60.0)
    acc = VoxelAccumulator(voxel)
    for i in range(len(seq)):
        scan = seq.scan(i)
        acc.add(transform_points(seq.T_world_velo(i), scan[:, :3].astype(np.float64)), scan[:, 3])
    world_map, _ = acc.result()
    tracer = as_tracer(seq_dir / "world_mesh.npz")
    camera = seq.calib.camera
    frames, sizes, snaps = [], [], []
    for i in range(0, len(seq), stride):
        T_world_cam = seq.T_world_cam(i)
        c = T_world_cam[:3, 3]
        near = world_map[np.linalg.norm(world_map - c, axis=1) <= radius]
        T_cam_world = invert(T_world_cam)
        inside = camera.project(transform_points(T_cam_world, near.astype(np.float64))).in_image
        pts = near[inside]
        snapped, moved = snap_to_surface(tracer, pts)
        gt = visible_points(tracer, snapped, T_world_cam, camera)
        frames.append(EvalFrame(near, inside, pts, T_cam_world, c, gt))
        sizes.append(len(near))
        snaps.append(moved)
    return EvalSet(
        f"{kind} ({seq_dir.name})", camera, frames, int(np.mean(sizes)), float(np.median(np.concatenate(snaps)))
    )


def score(es: EvalSet, masks: list[np.ndarray]) -> tuple[float, float, float]:
    tp = sum(int(np.sum(m & f.visible)) for m, f in zip(masks, es.frames, strict=True))
    kept = sum(int(m.sum()) for m in masks)
    vis = sum(int(f.visible.sum()) for f in es.frames)
    p = tp / kept if kept else 0.0
    r = tp / vis if vis else 0.0
    return p, r, 2 * p * r / (p + r) if p + r else 0.0


def run_ipr(es: EvalSet, cfg: IPRConfig, reps: int) -> tuple[float, list[np.ndarray]]:
    ms, masks = [], []
    for f in es.frames:
        t, m = median_ms(lambda f=f: visible_mask(f.near, f.T_cam_world, es.camera, cfg), reps)
        assert not np.any(m & ~f.inside)
        ms.append(t)
        masks.append(m[f.inside])
    return statistics.median(ms), masks


def run_hpr(es: EvalSet, factor: float) -> tuple[float, list[np.ndarray]]:
    import open3d as o3d

    ms, masks = [], []
    for f in es.frames:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(f.points.astype(np.float64)))
        diameter = float(np.linalg.norm(f.points.max(axis=0) - f.points.min(axis=0)))

        def run(pcd=pcd, f=f, diameter=diameter) -> np.ndarray:
            keep = np.zeros(len(f.points), dtype=bool)
            keep[np.asarray(pcd.hidden_point_removal(f.centre, factor * diameter)[1], dtype=np.int64)] = True
            return keep

        t, m = median_ms(run, 1)
        ms.append(t)
        masks.append(m)
    return statistics.median(ms), masks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequence", type=Path, action="append", help="synthetic sequence(s) to use (repeatable)")
    ap.add_argument("--frames", type=int, default=40, help="frames to generate per kind (default: 40)")
    ap.add_argument("--seed", type=int, default=101, help="seed of the generated sequences (default: 101)")
    ap.add_argument("--stride", type=int, default=4, help="evaluate every n-th frame (default: 4)")
    ap.add_argument("--voxel", type=float, default=0.2, help="map voxel, m (default: 0.2, as build-map)")
    ap.add_argument("--radius", type=float, default=None, help="map crop radius, m (default: 80 out, 30 in)")
    ap.add_argument("--reps", type=int, default=3, help="timing repetitions per IPR call (default: 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="fewer configurations in the sweep")
    ap.add_argument("--kinds", default="outdoor,indoor", help="kinds to generate (default: outdoor,indoor)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="ep2p-ipr-acc-") as tmp:
        seqs = args.sequence or [generate(k, args.frames, args.seed, Path(tmp)) for k in args.kinds.split(",")]
        sets = [eval_set(Path(s), args.stride, args.voxel, args.radius) for s in seqs]

    default = IPRConfig()
    if args.quick:
        configs = [IPRConfig(k, t, 2) for k in (3, 5, 7) for t in (0.05, 0.1)]
    else:
        configs = [IPRConfig(k, t, 2) for k in (3, 5, 7, 9, 11) for t in (0.05, 0.1, 0.2)]
        configs += [IPRConfig(k, 0.1, d) for d in (1, 4) for k in (3, 5, 7, 9, 11)]
    if default not in configs:
        configs.insert(0, default)
    hpr_factors = [10.0, 100.0, 1000.0] if not args.quick else [100.0]

    rows: list[tuple[str, list[tuple[float, float, float]], list[float]]] = []
    none = [(score(es, [np.ones(len(f.points), bool) for f in es.frames]), 0.0) for es in sets]
    rows.append(("no removal (all in-image points)", [s for s, _ in none], [t for _, t in none]))
    ipr_results = {}
    for cfg in configs:  # IPR before open3d's HPR is imported (two OpenMP runtimes: see bench_ipr.py)
        res = [run_ipr(es, cfg, args.reps) for es in sets]
        ipr_results[cfg] = [score(es, m) for es, (_, m) in zip(sets, res, strict=True)]
        label = f"IPR k={cfg.kernel_size} rel={cfg.rel_threshold:g} ds={cfg.downsample}"
        rows.append((label + (" (current default)" if cfg == default else ""), ipr_results[cfg], [t for t, _ in res]))
    for factor in hpr_factors:
        res = [run_hpr(es, factor) for es in sets]
        rows.append(
            (
                f"Open3D HPR radius={factor:g} x diameter",
                [score(es, m) for es, (_, m) in zip(sets, res, strict=True)],
                [t for t, _ in res],
            )
        )

    print(f"## IPR accuracy vs exact visibility (torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
    for es in sets:
        n_in = np.mean([len(f.points) for f in es.frames])
        vis = np.mean([f.visible.mean() for f in es.frames])
        print(
            f"- {es.name}: {len(es.frames)} frames; map {es.map_points:,} points per frame after the crop, "
            f"{n_in:,.0f} in the image, {vis:.1%} of those visible; median snap to the mesh {es.snap_median_m:.3f} m"
        )
    print()
    head = " | ".join(f"{es.name.split()[0]} P | R | F1 | ms/frame" for es in sets)
    print(f"| method | {head} |")
    print("|---|" + "---:|---:|---:|---:|" * len(sets))
    for label, scores, times in rows:
        cells = " | ".join(
            f"{p:.3f} | {r:.3f} | {f1:.3f} | {f'{t:.1f}' if t else '-'}"
            for (p, r, f1), t in zip(scores, times, strict=True)
        )
        print(f"| {label} | {cells} |")

    best = max(ipr_results, key=lambda c: np.mean([s[2] for s in ipr_results[c]]))
    f_def = [s[2] for s in ipr_results[default]]

    def name(c: IPRConfig) -> str:
        return f"k={c.kernel_size} rel={c.rel_threshold:g} ds={c.downsample}"

    print(
        f"\nBest mean F1: IPR {name(best)} ({np.mean([s[2] for s in ipr_results[best]]):.3f}); current default "
        f"{name(default)}: {np.mean(f_def):.3f}."
    )
    # a new default must be clearly better: F1 up by >= 0.01 on every sequence
    better = [c for c in ipr_results if all(s[2] >= f + 0.01 for s, f in zip(ipr_results[c], f_def, strict=True))]
    if better:
        pick = max(better, key=lambda c: np.mean([s[2] for s in ipr_results[c]]))
        print(f"Chosen default: {name(pick)} (F1 >= 0.01 better than the current default on every sequence).")
    else:
        print(f"Chosen default: {name(default)} (unchanged: no configuration is >= 0.01 F1 better on every sequence).")


if __name__ == "__main__":
    main()
