"""Benchmark: ``solve_pnp`` (both backends, and its upright search) vs raw OpenCV ``solvePnPRansac`` and PoseLib.

Scenes are real KITTI object frames (``test/data/kitti_object``): in-image LiDAR points with the true
calibration, put into a random "world" frame each trial, 1 px Gaussian pixel noise, and a fraction of the
pixels replaced by uniform random pixels (outliers). Every method gets the same threshold (8 px unless
``--threshold``), confidence 0.9999 and at most 10000 iterations, except the row "cv2 RANSAC (all defaults)"
which shows OpenCV's out-of-the-box settings (100 iterations, confidence 0.99).

The row "solve_pnp [upright search]" is given a guess 5 m and 10 deg (about the camera's vertical axis) from the
true pose, as the localizer gives it the retrieved submap's viewpoint; every other method gets no guess.

Errors are of the camera pose in the world: camera-centre distance (cm) and rotation angle (deg), medians
over the trials that returned a pose. Success = a pose within 10 cm and 0.5 deg.

A second table times Levenberg-Marquardt alone against OpenCV's ``solvePnPRefineLM`` from the same start.

Usage: ``.venv/bin/python bench/bench_pnp.py [--quick] [--trials N] [--seed S] [--sizes ...] [--outliers ...]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import poselib
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ep2p_loc_ros.calib import read_kitti_object_calib, read_velodyne_bin  # noqa: E402
from ep2p_loc_ros.geometry import (  # noqa: E402
    PinholeCamera,
    invert,
    make_T,
    rotation_angle_deg,
    rotvec_to_matrix,
    transform_points,
)
from ep2p_loc_ros.pnp import PnPConfig, refine_pose_lm, solve_pnp  # noqa: E402

DATA = ROOT / "test" / "data" / "kitti_object"
SIZES = (500, 2000, 10000)
OUTLIERS = (0.3, 0.5, 0.8, 0.95)

# A method maps (X, uv, camera, threshold, guess T_world_cam) -> T_cam_world (4x4) or None.
Method = Callable[[np.ndarray, np.ndarray, PinholeCamera, float, np.ndarray], "np.ndarray | None"]


def load_frames() -> list[tuple[PinholeCamera, np.ndarray, np.ndarray, np.ndarray]]:
    """(camera, in-image LiDAR points (velo frame), their true pixels, T_cam_velo) per KITTI frame."""
    frames = []
    for calib_path in sorted((DATA / "calib").glob("*.txt")):
        stem = calib_path.stem
        with Image.open(DATA / "image_2" / f"{stem}.png") as im:
            size = im.size
        calib = read_kitti_object_calib(calib_path, size)
        pts = read_velodyne_bin(DATA / "velodyne" / f"{stem}.bin")[:, :3].astype(np.float64)
        proj = calib.camera.project(transform_points(calib.T_cam_velo, pts))
        keep = proj.in_image & (proj.depth > 1.0)
        frames.append((calib.camera, pts[keep], proj.uv[keep], calib.T_cam_velo))
    return frames


def _pose_from_cv(ok: bool, rvec: np.ndarray | None, tvec: np.ndarray | None) -> np.ndarray | None:
    if not ok or rvec is None or tvec is None:
        return None
    return make_T(rotvec_to_matrix(np.asarray(rvec).reshape(3)), np.asarray(tvec).reshape(3))


def ours(backend: str, use_guess: bool = False) -> Method:
    def run(X: np.ndarray, uv: np.ndarray, cam: PinholeCamera, thr: float, guess: np.ndarray) -> np.ndarray | None:
        cfg = PnPConfig(backend=backend, reprojection_threshold_px=thr)
        est = solve_pnp(X, uv, cam, cfg, guess=guess if use_guess else None)
        return est.T_cam_world if est.ok else None

    return run


def cv2_ransac(flags: int, defaults: bool = False) -> Method:
    def run(X: np.ndarray, uv: np.ndarray, cam: PinholeCamera, thr: float, guess: np.ndarray) -> np.ndarray | None:
        try:
            if defaults:
                ok, rvec, tvec, _ = cv2.solvePnPRansac(X, uv, cam.K, None)
            else:
                ok, rvec, tvec, _ = cv2.solvePnPRansac(
                    X, uv, cam.K, None, iterationsCount=10000, reprojectionError=thr, confidence=0.9999, flags=flags
                )
        except cv2.error:
            return None
        return _pose_from_cv(ok, rvec, tvec)

    return run


def poselib_direct(
    X: np.ndarray, uv: np.ndarray, cam: PinholeCamera, thr: float, guess: np.ndarray
) -> np.ndarray | None:
    camera = {"model": "PINHOLE", "width": cam.width, "height": cam.height, "params": [cam.fx, cam.fy, cam.cx, cam.cy]}
    pose, info = poselib.estimate_absolute_pose(uv, X, camera, {"max_reproj_error": thr}, {})
    if info.get("num_inliers", 0) == 0:
        return None
    return make_T(np.asarray(pose.R), np.asarray(pose.t))


METHODS: dict[str, Method] = {
    "solve_pnp [opencv_usac]": ours("opencv_usac"),
    "solve_pnp [poselib]": ours("poselib"),
    "solve_pnp [upright search]": ours("opencv_usac", use_guess=True),
    "cv2 RANSAC (all defaults)": cv2_ransac(cv2.SOLVEPNP_ITERATIVE, defaults=True),
    "cv2 RANSAC (default flags)": cv2_ransac(cv2.SOLVEPNP_ITERATIVE),
    "cv2 USAC_DEFAULT": cv2_ransac(cv2.USAC_DEFAULT),
    "cv2 USAC_MAGSAC": cv2_ransac(cv2.USAC_MAGSAC),
    "PoseLib direct": poselib_direct,
}


def guess_near(
    T_world_cam: np.ndarray, rng: np.random.Generator, metres: float = 5.0, degrees: float = 10.0
) -> np.ndarray:
    """``T_world_cam`` turned by ``degrees`` about its own y axis and moved ``metres`` in its x-z plane."""
    from ep2p_loc_ros.upright_ransac import rot_y

    sign = rng.choice([-1.0, 1.0])
    a = rng.uniform(0, 2 * np.pi)
    out = T_world_cam.copy()
    out[:3, :3] = T_world_cam[:3, :3] @ rot_y(sign * np.radians(degrees))
    out[:3, 3] += T_world_cam[:3, :3] @ (metres * np.array([np.cos(a), 0.0, np.sin(a)]))
    return out


def random_pose(rng: np.random.Generator) -> np.ndarray:
    """A random world frame: any rotation, up to 100 m away (so poses are not all near identity)."""
    return make_T(rotvec_to_matrix(rng.normal(size=3)), rng.uniform(-100, 100, 3))


def pose_error(T_cam_world: np.ndarray, T_cam_world_true: np.ndarray) -> tuple[float, float]:
    """Camera-centre distance (cm) and rotation angle (deg) between an estimate and the truth."""
    T_wc, T_wc_true = invert(T_cam_world), invert(T_cam_world_true)
    cm = float(np.linalg.norm(T_wc[:3, 3] - T_wc_true[:3, 3])) * 100.0
    return cm, rotation_angle_deg(T_wc[:3, :3] @ T_wc_true[:3, :3].T)


def lm_table(frames: list, rng: np.random.Generator, trials: int, sizes: tuple[int, ...] = (200, 1000)) -> None:
    """Levenberg-Marquardt alone: ``refine_pose_lm`` (ours, weights all 1) against OpenCV's ``solvePnPRefineLM`` from
    the same start (the true pose turned and moved in random directions by about 1 deg and 20 cm), inliers only with
    1 px noise. Ours is what ``solve_pnp`` runs on its inliers (a few rounds a call, twice a frame in the localizer)
    with weights (the per-match confidences), which OpenCV's cannot take."""
    print()
    print("| N | LM | median ms | median t err (cm) | median R err (deg) |")
    print("|---:|---|---:|---:|---:|")
    for n in sizes:
        res: dict[str, list[tuple[float, float, float]]] = {"refine_pose_lm": [], "cv2.solvePnPRefineLM": []}
        for _ in range(trials):
            cam, pts, uv_true, T_cam_velo = frames[rng.integers(len(frames))]
            idx = rng.choice(len(pts), size=n, replace=False)
            X = np.ascontiguousarray(pts[idx])
            uv = np.ascontiguousarray(uv_true[idx] + rng.normal(0.0, 1.0, (n, 2)))
            start = (
                make_T(
                    rotvec_to_matrix(rng.normal(size=3) * np.radians(1.0 / np.sqrt(3))),
                    rng.normal(size=3) * 0.2 / np.sqrt(3),
                )
                @ T_cam_velo
            )
            for name in res:
                t0 = time.perf_counter()
                if name == "refine_pose_lm":
                    T = refine_pose_lm(start, X, uv, cam.K)[0]
                else:
                    rvec, tvec = cv2.Rodrigues(start[:3, :3])[0], start[:3, 3].reshape(3, 1).copy()
                    rvec, tvec = cv2.solvePnPRefineLM(X, uv, cam.K, None, rvec, tvec)
                    T = make_T(cv2.Rodrigues(rvec)[0], tvec.reshape(3))
                ms = (time.perf_counter() - t0) * 1e3
                res[name].append((ms, *pose_error(T, T_cam_velo)))
        for name, rows in res.items():
            a = np.array(rows)
            print(f"| {n} | {name} | {np.median(a[:, 0]):.2f} | {np.median(a[:, 1]):.2f} | {np.median(a[:, 2]):.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 trials per cell instead of --trials")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=PnPConfig().reprojection_threshold_px)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="correspondences per problem")
    ap.add_argument("--outliers", type=float, nargs="+", default=list(OUTLIERS), help="outlier fractions")
    args = ap.parse_args()
    trials = 3 if args.quick else args.trials
    frames = load_frames()
    rng = np.random.default_rng(args.seed)
    t_start = time.perf_counter()
    cam, pts, uv_true, _ = frames[0]
    for fn in METHODS.values():  # warm-up: first calls pay imports / allocations
        fn(np.ascontiguousarray(pts[:500]), np.ascontiguousarray(uv_true[:500]), cam, args.threshold, np.eye(4))

    print(
        f"PnP bench: KITTI object frames {len(frames)}, {trials} trials/cell, seed {args.seed}, "
        f"threshold {args.threshold} px, 1 px noise, OpenCV {cv2.__version__}, cv2 threads {cv2.getNumThreads()}"
    )
    print()
    print("| N | outliers | method | median ms | median t err (cm) | median R err (deg) | success |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for n in args.sizes:
        for frac in args.outliers:
            res: dict[str, list[tuple[float, float, float]]] = {m: [] for m in METHODS}
            for _ in range(trials):
                cam, pts, uv_true, T_cam_velo = frames[rng.integers(len(frames))]
                idx = rng.choice(len(pts), size=n, replace=False)
                T_velo_world = random_pose(rng)
                X = transform_points(invert(T_velo_world), pts[idx])
                T_cam_world_true = T_cam_velo @ T_velo_world
                uv = uv_true[idx] + rng.normal(0.0, 1.0, (n, 2))
                out = rng.random(n) < frac
                uv[out] = rng.uniform([-0.5, -0.5], [cam.width - 0.5, cam.height - 0.5], (int(out.sum()), 2))
                X, uv = np.ascontiguousarray(X), np.ascontiguousarray(uv)
                T_wc_true = invert(T_cam_world_true)
                guess = guess_near(T_wc_true, rng)
                for name, fn in METHODS.items():
                    t0 = time.perf_counter()
                    T = fn(X, uv, cam, args.threshold, guess)
                    ms = (time.perf_counter() - t0) * 1e3
                    if T is None or not np.all(np.isfinite(T)):
                        res[name].append((ms, np.nan, np.nan))
                        continue
                    res[name].append((ms, *pose_error(T, T_cam_world_true)))
            for name, rows in res.items():
                a = np.array(rows)
                ok = np.isfinite(a[:, 1])
                t_err, r_err = np.nan_to_num(a[:, 1], nan=1e9), np.nan_to_num(a[:, 2], nan=1e9)
                success = np.mean((t_err < 10.0) & (r_err < 0.5))
                t_med = f"{np.median(a[ok, 1]):.2f}" if ok.any() else "-"
                r_med = f"{np.median(a[ok, 2]):.4f}" if ok.any() else "-"
                print(
                    f"| {n} | {round(frac * 100)} % | {name} | {np.median(a[:, 0]):.1f} | {t_med} | {r_med} "
                    f"| {100 * success:.0f} % |"
                )
    lm_table(frames, rng, max(trials, 20))
    print()
    print(f"total {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
