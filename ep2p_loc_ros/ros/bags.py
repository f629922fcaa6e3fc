"""KITTI-layout sequence ⇄ ROS 2 bag (written and read with ``rosbags``: no rosbag2 needed).

A bag made here holds, per frame ``i`` (log time = header stamp = ``start + times[i]``):

| topic | type | content |
| --- | --- | --- |
| ``/camera/image_raw`` | sensor_msgs/Image | rectified colour image (``rgb8``), frame ``camera`` |
| ``/camera/camera_info`` | sensor_msgs/CameraInfo | intrinsics (``K``, ``P = [K | 0]``, no distortion) |
| ``/tf_static`` | tf2_msgs/TFMessage | once: ``base_link → camera`` (the optical frame; transient local QoS) |
| ``/tf`` | tf2_msgs/TFMessage | optional odometry ``odom → base_link`` (true motion; drift on request) |
| ``/ground_truth/pose`` | geometry_msgs/PoseStamped | ``T_map_base`` of the frame, frame ``map`` |

``base_link`` is the synthetic rig's base (on the ground, below the LiDAR) when the sequence has ``sim.json``,
and the LiDAR frame otherwise (real KITTI odometry: ``Tr``). The map frame is the sequence's world frame (the
frame the LiDAR map was built in), so a localizer's ``T_map_cam`` compares directly with the ground truth.

MCAP by default (what Foxglove and ``ros2 bag`` read out of the box), sqlite3 on request.
"""

from __future__ import annotations

import importlib
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..geometry import PinholeCamera, invert

__all__ = [
    "FRAMES",
    "TOPICS",
    "BagFrame",
    "BagInfo",
    "bag_frames",
    "camera_to_camera_info",
    "load_bag_summary",
    "read_bag",
    "sequence_base_mount",
    "sequence_to_bag",
]

TOPICS = {
    "image": "/camera/image_raw",
    "camera_info": "/camera/camera_info",
    "tf": "/tf",
    "tf_static": "/tf_static",
    "ground_truth": "/ground_truth/pose",
    "lidar": "/velodyne_points",  # only with make-bag --lidar
}
FRAMES = {"map": "map", "odom": "odom", "base": "base_link", "camera": "camera", "lidar": "velodyne"}
DEFAULT_START_S = 1_700_000_000.0  # bag time of frame 0 when times.txt starts at 0 (fixed: reproducible bags)
STORAGES = ("mcap", "sqlite3")

_TYPES = {
    TOPICS["image"]: "sensor_msgs/msg/Image",
    TOPICS["camera_info"]: "sensor_msgs/msg/CameraInfo",
    TOPICS["tf"]: "tf2_msgs/msg/TFMessage",
    TOPICS["tf_static"]: "tf2_msgs/msg/TFMessage",
    TOPICS["ground_truth"]: "geometry_msgs/msg/PoseStamped",
    TOPICS["lidar"]: "sensor_msgs/msg/PointCloud2",
}


def msg_class(msgtype: str):
    """``'sensor_msgs/msg/Image'`` -> the rclpy message class."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def stamp_from_ns(t_ns: int):
    from builtin_interfaces.msg import Time

    return Time(sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000))


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def camera_to_camera_info(camera: PinholeCamera, frame_id: str = FRAMES["camera"], stamp=None):
    """:class:`PinholeCamera` -> ``sensor_msgs/CameraInfo`` (rectified: ``P = [K | 0]``, ``R = I``)."""
    from sensor_msgs.msg import CameraInfo

    K = np.asarray(camera.K, dtype=np.float64)
    msg = CameraInfo(width=int(camera.width), height=int(camera.height), distortion_model="plumb_bob")
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    dist = np.zeros(5) if camera.dist is None else np.asarray(camera.dist, dtype=np.float64).ravel()
    msg.d = [float(v) for v in dist]
    msg.k = [float(v) for v in K.ravel()]
    msg.r = [float(v) for v in np.eye(3).ravel()]
    P = np.zeros((3, 4))
    P[:, :3] = K
    msg.p = [float(v) for v in P.ravel()]
    return msg


def sequence_base_mount(seq) -> np.ndarray:
    """``T_base_cam`` of the sequence's image camera: the sim rig's base, else the LiDAR frame (real KITTI)."""
    T_cam_velo = seq.calib.T_cam_velo
    sim = Path(seq.root) / "sim.json"
    T_base_velo = np.eye(4)
    if sim.is_file():
        try:
            T_base_velo = np.asarray(json.loads(sim.read_text())["T_base_velo"], dtype=np.float64)
        except (KeyError, ValueError) as exc:
            raise DataError(f"{sim}: no usable T_base_velo ({exc})") from exc
        if T_base_velo.shape != (4, 4) or not np.isfinite(T_base_velo).all():
            raise DataError(f"{sim}: T_base_velo must be a finite 4x4 matrix")
    return T_base_velo @ invert(T_cam_velo)


@dataclass(frozen=True)
class BagInfo:
    path: Path
    storage: str
    frames: list[int]  # sequence frame indices written, in order
    stamps_ns: list[int]
    size_bytes: int
    topics: dict[str, int]  # topic -> message count


def _frame_indices(n: int, frames: Sequence[int] | None, stride: int, max_frames: int | None) -> list[int]:
    idx = list(range(n)) if frames is None else [int(i) for i in frames]
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise DataError(f"frame indices {bad[:5]} outside 0..{n - 1}")
    idx = idx[:: max(1, int(stride))]
    return idx[:max_frames] if max_frames is not None else idx


def sequence_to_bag(
    sequence,
    out: str | Path,
    storage: str = "mcap",
    frames: Sequence[int] | None = None,
    stride: int = 1,
    max_frames: int | None = None,
    odometry: bool = True,
    start_time_s: float | None = None,
    progress: bool = False,
    lidar: bool = False,
    odometry_drift: tuple[float, float] = (0.0, 0.0),
    odometry_seed: int = 0,
) -> BagInfo:
    """Write a KITTI odometry-layout sequence (dir or reader) as a ROS 2 bag at ``out`` (must not exist).

    ``odometry_drift``: (fraction of the distance, degrees per metre) of error per step in ``odom -> base_link``
    (``sim/odometry.py``, seeded by ``odometry_seed``); (0, 0): the ground truth's motion, drift free.

    ``lidar``: also each frame's scan on ``/velodyne_points`` (x, y, z, intensity = reflectance, frame
    ``velodyne``) and the ``base_link -> velodyne`` mount on ``/tf_static`` (what ``bag-to-sequence`` reads back).

    Written into a staging directory next to ``out`` first and renamed, so ``out`` is either complete or absent.
    """
    from rclpy.serialization import serialize_message
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    from tqdm import tqdm

    from ..datasets.kitti_odometry import KittiOdometrySequence
    from .convert import matrix_to_pose, rgb_to_image, xyz_to_pointcloud2
    from .tf import make_transform_stamped

    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    seq = sequence if isinstance(sequence, KittiOdometrySequence) else KittiOdometrySequence(Path(sequence))
    out = Path(out)
    if out.exists():
        raise DataError(f"{out}: exists; remove it or choose another output path")
    idx = _frame_indices(len(seq), frames, stride, max_frames)
    if not idx:
        raise DataError(f"{seq.root}: no frames selected")
    if seq.poses is None:
        raise DataError(f"{seq.root}: no poses.txt; a bag for evaluation needs ground truth")
    times = seq.times
    start = DEFAULT_START_S if start_time_s is None else float(start_time_s)
    if start_time_s is None and times[0] > 1e8:  # absolute times (real recordings): keep them
        start = 0.0
    stamps = [round((start + float(times[i])) * 1e9) for i in idx]
    if any(b <= a for a, b in itertools.pairwise(stamps)):
        raise DataError(f"{seq.root / 'times.txt'}: timestamps of the selected frames are not increasing")

    camera = seq.calib.camera
    T_base_cam = sequence_base_mount(seq)
    T_map_base = [seq.T_world_cam(i) @ invert(T_base_cam) for i in idx]
    if any(odometry_drift):
        from ..sim.odometry import drifting_odometry

        rng = np.random.default_rng(odometry_seed)
        T_odom_base = drifting_odometry(np.stack(T_map_base), *odometry_drift, rng)
    else:  # drift-free: odom starts at the first base pose
        T_odom_base = np.stack([invert(T_map_base[0]) @ T for T in T_map_base])

    ts = get_typestore(Stores.ROS2_KILTED)
    t_inf = QosTime(sec=0, nsec=0)  # 0 = the default (no deadline, infinite lifespan) in rosbag2 metadata
    latched = Qos(
        history=QosHistory.KEEP_LAST,
        depth=1,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL,
        deadline=t_inf,
        lifespan=t_inf,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=t_inf,
        avoid_ros_namespace_conventions=False,
    )
    import shutil

    staging = out.with_name(f".{out.name}.partial")  # the bag's file is named after its directory: keep it
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tmp = staging / out.name
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    counts: dict[str, int] = {}
    with Writer(tmp, version=9, storage_plugin=plugin) as w:
        conns = {}
        for key, topic in TOPICS.items():
            if (key == "tf" and not odometry) or (key == "lidar" and not lidar):
                continue
            qos = [latched] if key == "tf_static" else []
            conns[topic] = w.add_connection(topic, _TYPES[topic], typestore=ts, offered_qos_profiles=qos)

        def put(topic: str, t_ns: int, msg) -> None:
            w.write(conns[topic], t_ns, serialize_message(msg))
            counts[topic] = counts.get(topic, 0) + 1

        from geometry_msgs.msg import PoseStamped
        from tf2_msgs.msg import TFMessage

        static = [make_transform_stamped(T_base_cam, FRAMES["base"], FRAMES["camera"], stamp_from_ns(stamps[0]))]
        if lidar:
            T_base_velo = T_base_cam @ seq.calib.T_cam_velo
            static.append(
                make_transform_stamped(T_base_velo, FRAMES["base"], FRAMES["lidar"], stamp_from_ns(stamps[0]))
            )
        put(TOPICS["tf_static"], stamps[0], TFMessage(transforms=static))
        for k, (i, t_ns) in enumerate(
            zip(tqdm(idx, desc="make-bag", unit="frame", disable=not progress), stamps, strict=True)
        ):
            stamp = stamp_from_ns(t_ns)
            if odometry:
                odo = make_transform_stamped(T_odom_base[k], FRAMES["odom"], FRAMES["base"], stamp)
                put(TOPICS["tf"], t_ns, TFMessage(transforms=[odo]))
            put(TOPICS["camera_info"], t_ns, camera_to_camera_info(camera, stamp=stamp))
            put(TOPICS["image"], t_ns, rgb_to_image(seq.image(i), frame_id=FRAMES["camera"], stamp=stamp))
            if lidar:
                scan = seq.scan(i)
                put(TOPICS["lidar"], t_ns, xyz_to_pointcloud2(scan[:, :3], scan[:, 3], FRAMES["lidar"], stamp))
            gt = PoseStamped()
            gt.header.stamp, gt.header.frame_id = stamp, FRAMES["map"]
            gt.pose = matrix_to_pose(T_map_base[k])
            put(TOPICS["ground_truth"], t_ns, gt)
    tmp.replace(out)
    staging.rmdir()
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return BagInfo(out, storage, idx, stamps, size, counts)


def read_bag(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[tuple[str, int, object]]:
    """Yield ``(topic, log_time_ns, rclpy message)`` in log-time order, optionally only ``topics``."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise DataError(f"{path}: not a ROS 2 bag directory (no metadata.yaml)")
    with Reader(path) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        classes = {c.msgtype: msg_class(c.msgtype) for c in conns}
        for conn, t_ns, raw in reader.messages(connections=conns):
            yield conn.topic, t_ns, deserialize_message(raw, classes[conn.msgtype])


@dataclass
class BagFrame:
    stamp_ns: int
    rgb: np.ndarray
    camera: PinholeCamera


def bag_frames(path: str | Path) -> Iterator[BagFrame]:
    """Images of a bag with the latest camera_info before each (what the node sees, decoded the same way)."""
    from .convert import camera_info_to_camera, image_to_rgb

    camera = None
    for topic, _, msg in read_bag(path, [TOPICS["image"], TOPICS["camera_info"]]):
        if topic == TOPICS["camera_info"]:
            camera = camera_info_to_camera(msg)
        elif camera is not None:
            yield BagFrame(stamp_to_ns(msg.header.stamp), image_to_rgb(msg), camera)


@dataclass
class BagSummary:
    """The non-image content of a bag: ground truth, mount, and image stamps."""

    image_stamps_ns: list[int] = field(default_factory=list)
    gt_stamps_ns: list[int] = field(default_factory=list)
    T_map_base_gt: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))
    T_base_cam: np.ndarray | None = None  # from /tf_static (base_link -> camera)
    duration_s: float = 0.0


def load_bag_summary(path: str | Path) -> BagSummary:
    """Ground truth, camera mount and image stamps of a bag made by :func:`sequence_to_bag` (no image decode)."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    from .convert import pose_to_matrix

    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise DataError(f"{path}: not a ROS 2 bag directory (no metadata.yaml)")
    out = BagSummary()
    gts = []
    with Reader(path) as reader:
        out.duration_s = reader.duration / 1e9
        want = {TOPICS["ground_truth"], TOPICS["tf_static"], TOPICS["image"]}
        conns = [c for c in reader.connections if c.topic in want]
        for conn, t_ns, raw in reader.messages(connections=conns):
            if conn.topic == TOPICS["image"]:
                out.image_stamps_ns.append(int(t_ns))  # log time = header stamp in our bags; avoids decoding
            elif conn.topic == TOPICS["ground_truth"]:
                msg = deserialize_message(raw, msg_class(conn.msgtype))
                out.gt_stamps_ns.append(stamp_to_ns(msg.header.stamp))
                gts.append(pose_to_matrix(msg.pose))
            else:
                msg = deserialize_message(raw, msg_class(conn.msgtype))
                for t in msg.transforms:
                    if t.header.frame_id == FRAMES["base"] and t.child_frame_id == FRAMES["camera"]:
                        out.T_base_cam = pose_to_matrix(t.transform)
    out.T_map_base_gt = np.stack(gts) if gts else np.zeros((0, 4, 4))
    return out
