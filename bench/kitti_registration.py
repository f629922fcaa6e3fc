"""Real KITTI: register each shipped image to a map made of its own LiDAR scan (truth from the calibration).

Each frame of ``test/data/kitti_object`` becomes a one-frame KITTI-odometry sequence whose world frame is the
LiDAR frame (z up, as the point encoder expects), the map is built from that scan with the model's features, and
the image is localized by the full pipeline (retrieval of the single submap, IPR, matching, PnP). The true
``T_map_cam`` is ``inv(T_cam_velo)``. The shipped model never saw a real image: this measures domain transfer.

Each frame runs three times: with the localizer's defaults, without the reflectance alignment, and without the
soft prior after retrieval. The one
submap's viewpoint *is* the true camera here, so the first row says how far the matches pull the pose away from a
prior that is right; the second, what the matches give on their own (the domain-transfer figure).

    python bench/kitti_registration.py [--model models] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ep2p_loc_ros.datasets.kitti_object import iter_frames
from ep2p_loc_ros.datasets.kitti_odometry import write_calib, write_poses
from ep2p_loc_ros.evaluation.metrics import pose_errors
from ep2p_loc_ros.geometry import invert
from ep2p_loc_ros.localizer import Localizer, LocalizerConfig
from ep2p_loc_ros.map import MapBuildParams, build_map, save_map
from ep2p_loc_ros.model.features import submap_feature_fn
from ep2p_loc_ros.reflectance_alignment import AlignmentConfig

ROOT = Path(__file__).resolve().parents[1]


def _as_sequence(frame, out: Path) -> np.ndarray:
    """Write a one-frame odometry-layout sequence; returns the true ``T_map_cam`` (map = LiDAR frame)."""
    (out / "image_2").mkdir(parents=True)
    (out / "velodyne").mkdir()
    from PIL import Image

    Image.fromarray(frame.image).save(out / "image_2" / "000000.png")
    frame.scan.astype("<f4").tofile(out / "velodyne" / "000000.bin")
    P = frame.calib.camera.K @ np.hstack([np.eye(3), np.zeros((3, 1))])
    write_calib(out / "calib.txt", [P] * 4, frame.calib.T_cam_velo)  # cam0 := the colour camera
    T_map_cam = invert(frame.calib.T_cam_velo)
    write_poses(out / "poses.txt", T_map_cam[None])
    (out / "times.txt").write_text("0.0\n")
    return T_map_cam


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models")
    ap.add_argument("--data", type=Path, default=ROOT / "test" / "data" / "kitti_object")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    no_prior = dict.fromkeys(LocalizerConfig().viewpoint_sigmas(), 0.0)
    unaligned = AlignmentConfig(after_retrieval=False, in_tracking=False)
    configs = (
        ("viewpoint prior", LocalizerConfig()),
        ("viewpoint prior, no reflectance alignment", LocalizerConfig(alignment=unaligned)),
        ("none", LocalizerConfig(**no_prior)),
    )
    tmp = Path(tempfile.mkdtemp(prefix="kitti-reg-"))
    try:
        for frame in iter_frames(args.data):
            seq = tmp / frame.frame_id
            T_gt = _as_sequence(frame, seq)
            lidar_map = build_map(
                seq,
                MapBuildParams(spacing=10.0, radius=80.0),
                submap_feature_fn(args.model, frame.calib.camera),
                progress=False,
            )
            save_map(lidar_map, tmp / f"map-{frame.frame_id}")
            for prior, cfg in configs:
                loc = Localizer.from_paths(tmp / f"map-{frame.frame_id}", args.model, cfg)
                res = loc.localize(frame.image, frame.calib.camera)
                t, r = pose_errors(res.T_map_cam[None], T_gt[None])
                rows.append(
                    {
                        "frame": frame.frame_id,
                        "prior": prior,
                        "status": res.status.value,
                        "matches": res.num_matches,
                        "inliers": res.num_inliers,
                        "t_err_m": float(t[0]),
                        "r_err_deg": float(r[0]),
                        "total_ms": res.timings_ms.get("total", float("nan")),
                    }
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"# Real KITTI image-to-own-scan registration, model {args.model}\n")
    print("| frame | prior after retrieval | status | matches | inliers | t err (m) | R err (°) | total (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['frame']} | {r['prior']} | {r['status']} | {r['matches']} | {r['inliers']} | {r['t_err_m']:.2f} | "
            f"{r['r_err_deg']:.2f} | {r['total_ms']:.0f} |"
        )


if __name__ == "__main__":
    main()
