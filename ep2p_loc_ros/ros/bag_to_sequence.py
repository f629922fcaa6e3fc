"""A recorded ROS 2 bag -> a KITTI odometry-layout sequence, so ``build-map``, ``train`` and ``evaluate`` take it.

Why: a car team's data is bags, and every offline command here reads the KITTI layout. The bag needs:

- rectified camera images (``sensor_msgs/Image``, any encoding ``image_to_rgb`` reads) and their
  ``CameraInfo`` (intrinsics from ``P``: the images must be rectified, as KITTI's are);
- LiDAR scans (``sensor_msgs/PointCloud2`` with x, y, z and optionally ``intensity``);
- the vehicle's pose in the map over time (``geometry_msgs/PoseStamped``, ``PoseWithCovarianceStamped`` or
  ``nav_msgs/Odometry`` of the base frame: a SLAM or survey trajectory);
- ``/tf_static`` with the base -> camera and base -> LiDAR mounts (frames named by the messages' headers).

Each image is paired with the nearest scan within ``max_dt_s`` (a scan pairs with one image at most); a frame is
the pair. Its pose is the base pose interpolated at the image stamp (linear in translation, geodesic in rotation),
and the scan is moved into the LiDAR frame *at the image stamp* using the poses at both stamps, so the frame's
single pose holds for both (KITTI's frames are synchronised; recorded ones are not quite). Images without a scan
or outside the trajectory are skipped and counted. Intensities above 1 (8-bit drivers) are divided by 255, so the
reflectance is in [0, 1] like KITTI's and the simulator's (or give the scale).

The sequence is written into a temporary sibling and moved into place, so ``out`` is complete or absent.
"""

from __future__ import annotations

import bisect
import itertools
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..geometry import invert
from ..pose_gate import interpolate_transform
from .bags import FRAMES, TOPICS, read_bag, stamp_to_ns

__all__ = ["ConversionSummary", "bag_to_sequence"]

POSE_TYPES = (
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "nav_msgs/msg/Odometry",
)


@dataclass
class ConversionSummary:
    out: Path
    frames: int
    images: int
    scans: int
    skipped: dict[str, int] = field(default_factory=dict)  # why images were left out -> how many
    max_pair_dt_ms: float = 0.0  # largest image-scan stamp difference among the frames written


def _topic_types(bag: Path) -> dict[str, str]:
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def _pose_of(msg, msgtype: str) -> np.ndarray:
    from .convert import pose_to_matrix

    if msgtype == "geometry_msgs/msg/PoseStamped":
        return pose_to_matrix(msg.pose)
    return pose_to_matrix(msg.pose.pose)  # PoseWithCovarianceStamped, Odometry


class _Trajectory:
    """Base poses over time, interpolated between neighbours (no extrapolation)."""

    def __init__(self, stamps_ns: list[int], poses: list[np.ndarray]) -> None:
        order = np.argsort(stamps_ns, kind="stable")
        self.t = [int(stamps_ns[i]) for i in order]
        self.T = [poses[i] for i in order]

    def at(self, t_ns: int) -> np.ndarray | None:
        k = bisect.bisect_left(self.t, t_ns)
        if k < len(self.t) and self.t[k] == t_ns:
            return self.T[k]
        if k == 0 or k == len(self.t):
            return None
        t0, t1 = self.t[k - 1], self.t[k]
        return interpolate_transform(self.T[k - 1], self.T[k], (t_ns - t0) / (t1 - t0))


def _pair(image_ns: list[int], scan_ns: list[int], max_dt_ns: int) -> dict[int, int]:
    """image index -> scan index: each image's nearest scan within ``max_dt_ns``, each scan used once (the
    closer image keeps it)."""
    best: dict[int, tuple[int, int]] = {}  # scan -> (|dt|, image)
    for i, t in enumerate(image_ns):
        k = bisect.bisect_left(scan_ns, t)
        cands = [j for j in (k - 1, k) if 0 <= j < len(scan_ns)]
        if not cands:
            continue
        j = min(cands, key=lambda j: abs(scan_ns[j] - t))
        dt = abs(scan_ns[j] - t)
        if dt <= max_dt_ns and (j not in best or dt < best[j][0]):
            best[j] = (dt, i)
    return {i: j for j, (_, i) in best.items()}


def bag_to_sequence(
    bag: str | Path,
    out: str | Path,
    image_topic: str = TOPICS["image"],
    camera_info_topic: str = TOPICS["camera_info"],
    lidar_topic: str = TOPICS["lidar"],
    pose_topic: str = TOPICS["ground_truth"],
    base_frame: str = FRAMES["base"],
    max_dt_s: float = 0.05,
    intensity_scale: float | None = None,
    progress: bool = False,
) -> ConversionSummary:
    """Write the bag's synchronised image + scan pairs as a KITTI odometry-layout sequence at ``out``.

    ``intensity_scale``: reflectance = intensity × this; None: 1/255 for a scan whose intensities exceed 1 (8-bit
    drivers), else 1."""
    from PIL import Image
    from tqdm import tqdm

    from ..datasets.kitti_odometry import write_calib, write_poses
    from .convert import camera_info_to_camera, image_to_rgb, pointcloud2_to_xyzi, pose_to_matrix

    bag, out = Path(bag), Path(out)
    if out.exists():
        raise DataError(f"{out}: exists; remove it or choose another output path")
    if not max_dt_s >= 0:
        raise ValueError(f"max_dt_s must be >= 0, got {max_dt_s}")
    if not (bag / "metadata.yaml").is_file():
        raise DataError(f"{bag}: not a ROS 2 bag directory (no metadata.yaml)")
    types = _topic_types(bag)
    for what, topic in (("images", image_topic), ("camera_info", camera_info_topic), ("scans", lidar_topic)):
        if topic not in types:
            raise DataError(f"{bag}: no {what} topic {topic!r}; the bag has {sorted(types)}")
    if types.get(pose_topic) not in POSE_TYPES:
        got = f"type {types[pose_topic]}" if pose_topic in types else "no such topic"
        raise DataError(f"{bag}: pose topic {pose_topic!r} must be one of {POSE_TYPES} ({got})")

    # Pass 1: everything but the image and scan payloads (stamps, poses, mounts, camera).
    image_ns, scan_ns, pose_ns, poses = [], [], [], []
    mounts: dict[str, np.ndarray] = {}
    camera = cam_frame = lidar_frame = None
    for topic, _, msg in read_bag(bag, [image_topic, camera_info_topic, lidar_topic, pose_topic, TOPICS["tf_static"]]):
        if topic == image_topic:
            image_ns.append(stamp_to_ns(msg.header.stamp))
            cam_frame = cam_frame or msg.header.frame_id
        elif topic == lidar_topic:
            scan_ns.append(stamp_to_ns(msg.header.stamp))
            lidar_frame = lidar_frame or msg.header.frame_id
        elif topic == camera_info_topic:
            camera = camera or camera_info_to_camera(msg, rectified=True)
        elif topic == pose_topic:
            pose_ns.append(stamp_to_ns(msg.header.stamp))
            poses.append(_pose_of(msg, types[pose_topic]))
        else:
            for t in msg.transforms:
                if t.header.frame_id.lstrip("/") == base_frame:
                    mounts[t.child_frame_id.lstrip("/")] = pose_to_matrix(t.transform)
    if camera is None or not image_ns or not scan_ns or not poses:
        raise DataError(
            f"{bag}: needs camera_info, images, scans and poses; got {int(camera is not None)} camera_info, "
            f"{len(image_ns)} images, {len(scan_ns)} scans, {len(poses)} poses"
        )
    for what, frame in (("camera", cam_frame), ("LiDAR", lidar_frame)):
        if (frame or "").lstrip("/") not in mounts:
            raise DataError(
                f"{bag}: no {base_frame} -> {frame!r} ({what}) transform on /tf_static; "
                f"mounts found: {sorted(mounts) or 'none'}"
            )
    T_base_cam, T_base_velo = mounts[cam_frame.lstrip("/")], mounts[lidar_frame.lstrip("/")]
    T_cam_velo = invert(T_base_cam) @ T_base_velo
    trajectory = _Trajectory(pose_ns, poses)
    scan_sorted = sorted(range(len(scan_ns)), key=lambda j: scan_ns[j])
    pairs = _pair(image_ns, [scan_ns[j] for j in scan_sorted], round(max_dt_s * 1e9))
    pairs = {i: scan_sorted[j] for i, j in pairs.items()}
    skipped = {"no scan within max_dt": len(image_ns) - len(pairs)}
    frames: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # (image index, scan index, T_map_cam, scan motion)
    for i in sorted(pairs, key=lambda i: image_ns[i]):
        j = pairs[i]
        T_img, T_scan = trajectory.at(image_ns[i]), trajectory.at(scan_ns[j])
        if T_img is None or T_scan is None:
            skipped["outside the pose trajectory"] = skipped.get("outside the pose trajectory", 0) + 1
            continue
        # scan points (LiDAR frame at the scan stamp) -> LiDAR frame at the image stamp
        motion = invert(T_img @ T_base_velo) @ (T_scan @ T_base_velo)
        frames.append((i, j, T_img @ T_base_cam, motion))
    if not frames:
        raise DataError(f"{bag}: no image has a scan within {max_dt_s} s and a pose: {skipped}")
    stamps = [image_ns[f[0]] for f in frames]
    if any(b <= a for a, b in itertools.pairwise(stamps)):
        raise DataError(f"{bag}: image stamps repeat; a sequence needs increasing times")

    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "image_2").mkdir(parents=True)
    (staging / "velodyne").mkdir()
    try:
        # Pass 2: the payloads of the chosen frames, written as they stream by (bags are read in time order).
        index_of_image = {f[0]: k for k, f in enumerate(frames)}
        index_of_scan = {f[1]: k for k, f in enumerate(frames)}
        image_k = scan_k = -1
        bar = tqdm(total=2 * len(frames), desc="bag-to-sequence", unit="msg", disable=not progress)
        for topic, _, msg in read_bag(bag, [image_topic, lidar_topic]):
            if topic == image_topic:
                image_k += 1
                k = index_of_image.get(image_k)
                if k is not None:
                    Image.fromarray(image_to_rgb(msg)).save(staging / "image_2" / f"{k:06d}.png")
                    bar.update()
            else:
                scan_k += 1
                k = index_of_scan.get(scan_k)
                if k is not None:
                    xyzi = pointcloud2_to_xyzi(msg)
                    xyzi = xyzi[np.isfinite(xyzi).all(axis=1)]
                    motion = frames[k][3]
                    xyzi[:, :3] = xyzi[:, :3] @ motion[:3, :3].T + motion[:3, 3]
                    if intensity_scale is not None:
                        xyzi[:, 3] *= intensity_scale
                    elif len(xyzi) and xyzi[:, 3].max() > 1.0:  # 8-bit intensities -> reflectance in [0, 1]
                        xyzi[:, 3] /= 255.0
                    xyzi.astype(np.float32).tofile(staging / "velodyne" / f"{k:06d}.bin")
                    bar.update()
        bar.close()
        P = np.hstack([camera.K, np.zeros((3, 1))])
        write_calib(staging / "calib.txt", [P, P, P, P], T_cam_velo)  # one camera: cam0 = cam2, no baseline
        write_poses(staging / "poses.txt", np.stack([f[2] for f in frames]))
        (staging / "times.txt").write_text("".join(f"{t / 1e9:.9f}\n" for t in stamps))
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    dts = [abs(image_ns[i] - scan_ns[j]) / 1e6 for i, j, _, _ in frames]
    return ConversionSummary(out, len(frames), len(image_ns), len(scan_ns), skipped, float(max(dts)))
