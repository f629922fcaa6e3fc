"""Build a :class:`LidarMap` from a KITTI odometry-layout sequence: fuse scans, voxelise, cut into submaps.

Pipeline: every ``scan_stride``-th scan is moved into the world frame with its pose (``T_world_velo``), and
folded into a running voxel grid that keeps per-voxel sums (so the result is the exact centroid and mean
reflectance of every voxel, whatever the batching). Viewpoints are the camera poses taken every ``spacing``
metres of travelled path; a submap is every map point within ``radius`` of its viewpoint. Map points are then
ordered by their nearest viewpoint, so one submap's rows lie in a few contiguous runs of the files: gathering
a submap from the memory maps touches few pages.

Per-point features and global descriptors come from an optional feature function (the model, issue 5) run
on each submap; see :data:`FeatureFn` and :func:`compute_features`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError
from ..geometry import transform_points
from .environment import environment_from_openness, scan_openness
from .store import ENVIRONMENTS, LidarMap, Submap

if TYPE_CHECKING:  # imported where used: opening a map should not pull in the dataset readers (PIL)
    from ..datasets.kitti_odometry import KittiOdometrySequence

__all__ = [
    "FeatureFn",
    "MapBuildParams",
    "VoxelAccumulator",
    "build_map",
    "compute_features",
    "declared_environment",
    "select_viewpoints",
    "submap_index",
]

FeatureFn = Callable[[Submap], tuple[np.ndarray, np.ndarray]]
"""``feature_fn(submap) -> (point_features (n, D), descriptor (Dg,))`` for one submap.

The submap arrives with its map-frame points, reflectance and ``T_map_viewpoint`` (``submap.points_in_viewpoint()``
gives the local cloud a network usually wants); its own ``features``/``descriptor`` are empty (D = Dg = 0).
A point lies in several overlapping submaps: it keeps the features computed in the submap whose viewpoint is
nearest to it, where it has the most context around it. ``D`` and ``Dg`` must be the same for every submap.
"""

_KEY_BITS = 21  # per axis: +-2**20 voxels (about +-210 km at 0.2 m) packed into one int64 key
_KEY_OFF = 1 << (_KEY_BITS - 1)
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def sequence_environment(root: Path) -> str:
    """ "outdoor" or "indoor" for a synthetic sequence (its sim.json's kind), else "unknown"."""
    try:
        kind = json.loads((Path(root) / "sim.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return "unknown"
    return kind if kind in ENVIRONMENTS else "unknown"


def declared_environment(requested: str, root: Path) -> tuple[str, str] | None:
    """(environment, why) when the request, or with "auto" a synthetic sequence's sim.json, says where the map is;
    None when the scans' ranges must tell (map/environment.py)."""
    if requested != "auto":
        return requested, "given"
    known = sequence_environment(root)
    return (known, "sim.json") if known != "unknown" else None


@dataclass(frozen=True)
class MapBuildParams:
    """Builder parameters (stored in the map's manifest, so a map says how it was made)."""

    voxel: float = 0.2  # voxel edge (m); map points are voxel centroids
    spacing: float = 10.0  # path length (m) between submap viewpoints
    radius: float = 40.0  # submap = map points within this distance (m) of the viewpoint
    min_range: float = 0.0  # drop scan points closer than this to the LiDAR (ego vehicle), m
    max_range: float = 0.0  # drop scan points farther than this (0: keep all), m
    scan_stride: int = 1  # fuse every n-th scan
    batch_points: int = 4_000_000  # raw points folded into the voxel grid at once (bounds peak memory)
    # where the map is: "outdoor", "indoor" or "auto" (a synthetic sequence's sim.json says; else how far the scans
    # see, map/environment.py, and "unknown" where that does not tell). The
    # localizer runs the reflectance alignment only on the environments of localizer.alignment.environments, and
    # on those of localizer.alignment.contrast_environments (indoor) by local contrast (models/README.md, "Session 26")
    environment: str = "auto"

    def __post_init__(self) -> None:
        for name in ("voxel", "spacing", "radius"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"map builder: {name} must be > 0, got {v}")
        if not (self.min_range >= 0 and self.max_range >= 0):
            raise ValueError(f"map builder: ranges must be >= 0, got min {self.min_range} max {self.max_range}")
        if self.max_range and self.max_range <= self.min_range:
            raise ValueError(f"map builder: max_range {self.max_range} must exceed min_range {self.min_range}")
        if self.scan_stride < 1 or self.batch_points < 1:
            raise ValueError("map builder: scan_stride and batch_points must be >= 1")
        if self.environment not in (*ENVIRONMENTS, "auto"):
            choices = ", ".join((*ENVIRONMENTS, "auto"))
            raise ValueError(f"map builder: environment must be one of {choices}, got {self.environment!r}")


class VoxelAccumulator:
    """Running voxel grid: per-voxel sums of xyz and reflectance and a count, merged batch by batch.

    Sums (not running means) make the result independent of batching; batches bound the memory to the
    occupied voxels plus one batch of raw points.
    """

    def __init__(self, voxel: float, batch_points: int = 4_000_000) -> None:
        self.voxel = float(voxel)
        self.batch_points = int(batch_points)
        self.keys = np.empty(0, np.int64)
        self.sums = np.empty((0, 4), np.float64)  # x, y, z, reflectance
        self.counts = np.empty(0, np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_n = 0

    def _key(self, xyz: np.ndarray) -> np.ndarray:
        ijk = np.floor(xyz / self.voxel).astype(np.int64)
        if ijk.size and (ijk.min() < -_KEY_OFF or ijk.max() >= _KEY_OFF):
            span = _KEY_OFF * self.voxel / 1000
            raise DataError(f"map builder: points beyond +-{span:.0f} km of the origin at voxel {self.voxel} m")
        ijk += _KEY_OFF
        return (ijk[:, 0] << (2 * _KEY_BITS)) | (ijk[:, 1] << _KEY_BITS) | ijk[:, 2]

    def add(self, xyz: np.ndarray, reflectance: np.ndarray) -> None:
        """Add points (world frame, float64 preferred) and their reflectance."""
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        vals = np.column_stack([xyz, np.asarray(reflectance, dtype=np.float64).reshape(-1)])
        self._pending.append((self._key(xyz), vals))
        self._pending_n += len(xyz)
        if self._pending_n >= self.batch_points:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self.keys, *(k for k, _ in self._pending)])
        sums = np.concatenate([self.sums, *(v for _, v in self._pending)])
        counts = np.concatenate([self.counts, np.ones(self._pending_n, np.int64)])
        self._pending, self._pending_n = [], 0
        self.keys, inv = np.unique(keys, return_inverse=True)
        inv = inv.reshape(-1)
        self.sums = np.column_stack([np.bincount(inv, weights=sums[:, j], minlength=len(self.keys)) for j in range(4)])
        self.counts = np.bincount(inv, weights=counts, minlength=len(self.keys)).astype(np.int64)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(points (N, 3) float32 centroids, reflectance (N,) float32 means), ordered by voxel key."""
        self._flush()
        means = self.sums / self.counts[:, None]
        return means[:, :3].astype(np.float32), means[:, 3].astype(np.float32)


def select_viewpoints(positions: np.ndarray, spacing: float) -> np.ndarray:
    """Frame indices of the viewpoints: the first frame, then each frame after ``spacing`` m of travelled path."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if len(positions) == 0:
        return np.empty(0, np.int64)
    step = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    chosen, travelled = [0], 0.0
    for i, d in enumerate(step, start=1):
        travelled += float(d)
        if travelled >= spacing:
            chosen.append(i)
            travelled = 0.0
    return np.asarray(chosen, dtype=np.int64)


def submap_index(points: np.ndarray, centres: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets (S+1,), indices (M,) int64, sorted per submap) of the points within ``radius`` of each centre."""
    from scipy.spatial import cKDTree

    tree = cKDTree(np.asarray(points, dtype=np.float64))
    parts = [np.asarray(tree.query_ball_point(c, radius, return_sorted=True), dtype=np.int64) for c in centres]
    offsets = np.zeros(len(parts) + 1, np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    indices = np.concatenate(parts) if parts else np.empty(0, np.int64)
    return offsets, indices


def compute_features(lidar_map: LidarMap, feature_fn: FeatureFn, *, progress: bool = True) -> LidarMap:
    """Run ``feature_fn`` on every submap; returns a copy of the map with ``features`` and ``descriptors``.

    Works on a just-built or a loaded (memory-mapped) map, so a model can be (re)applied without rebuilding.
    Points in no submap keep zero features. The features array is held in RAM (N x D float16).
    """
    from tqdm import tqdm

    N, S = lidar_map.num_points, lidar_map.num_submaps
    bare = replace(
        lidar_map, features=np.zeros((N, 0), np.float16), descriptors=np.zeros((S, 0), np.float32), path=None
    )
    features: np.ndarray | None = None
    descriptors: np.ndarray | None = None
    best = np.full(N, np.inf, np.float32)  # distance of each point to the viewpoint its features came from
    for s in tqdm(range(S), desc="features", unit="submap", disable=not progress):
        sub = bare.submap(s)
        feats, desc = feature_fn(sub)
        feats, desc = np.asarray(feats), np.asarray(desc)
        if feats.ndim != 2 or feats.shape[0] != len(sub):
            raise ValueError(f"feature function: submap {s} has {len(sub)} points but features shape {feats.shape}")
        if desc.ndim != 1:
            raise ValueError(f"feature function: submap {s} descriptor must be 1-D, got shape {desc.shape}")
        if features is None or descriptors is None:
            features = np.zeros((N, feats.shape[1]), np.float16)
            descriptors = np.zeros((S, desc.shape[0]), np.float32)
        if feats.shape[1] != features.shape[1] or desc.shape[0] != descriptors.shape[1]:
            raise ValueError(
                f"feature function: submap {s} gives D={feats.shape[1]}, Dg={desc.shape[0]}; submap 0 gave "
                f"D={features.shape[1]}, Dg={descriptors.shape[1]}"
            )
        if not (np.isfinite(feats).all() and np.isfinite(desc).all()):
            raise ValueError(f"feature function: submap {s} features/descriptor contain NaN/Inf")
        if feats.size and np.abs(feats).max() > _FLOAT16_MAX:
            raise ValueError(f"feature function: submap {s} features exceed the float16 range (+-{_FLOAT16_MAX})")
        dist = np.linalg.norm(sub.points - sub.T_map_viewpoint[:3, 3].astype(np.float32), axis=1)
        closer = dist < best[sub.point_indices]
        rows = sub.point_indices[closer]
        features[rows] = feats[closer].astype(np.float16)
        best[rows] = dist[closer]
        descriptors[s] = desc.astype(np.float32)
    if features is None or descriptors is None:  # a map without submaps
        features, descriptors = bare.features, bare.descriptors
    return replace(lidar_map, features=features, descriptors=descriptors, path=None, manifest=None)


def build_map(
    sequence: KittiOdometrySequence | str | Path,
    params: MapBuildParams | None = None,
    feature_fn: FeatureFn | None = None,
    *,
    feature_model: str | None = None,
    progress: bool = True,
) -> LidarMap:
    """Build the map of a sequence (needs ``poses.txt``); ``feature_model`` only labels the features in params."""
    from tqdm import tqdm

    from ..datasets.kitti_odometry import KittiOdometrySequence

    params = params or MapBuildParams()
    seq = sequence if isinstance(sequence, KittiOdometrySequence) else KittiOdometrySequence(Path(sequence))
    if seq.poses is None:
        raise DataError(f"{seq.root}: sequence has no poses.txt; a map needs every scan's pose")
    if len(seq) == 0:
        raise DataError(f"{seq.root}: sequence has no frames")

    frames = range(0, len(seq), params.scan_stride)
    acc = VoxelAccumulator(params.voxel, params.batch_points)
    declared = declared_environment(params.environment, seq.root)
    openness: list[float] = []  # how far each scan sees, for a map whose sequence does not say where it is
    for i in tqdm(frames, desc="scans", unit="scan", disable=not progress):
        scan = seq.scan(i)
        if declared is None:
            openness.append(scan_openness(scan))
        r = np.linalg.norm(scan[:, :3], axis=1)
        keep = r >= params.min_range
        if params.max_range:
            keep &= r <= params.max_range
        scan = scan[keep]
        acc.add(transform_points(seq.T_world_velo(i), scan[:, :3].astype(np.float64)), scan[:, 3])
    points, reflectance = acc.result()
    if len(points) == 0:
        raise DataError(f"{seq.root}: no scan points left after range filtering")

    T_world_cam = np.stack([seq.T_world_cam(i) for i in range(len(seq))])
    vp_frames = select_viewpoints(T_world_cam[:, :3, 3], params.spacing)
    T_map_viewpoint = T_world_cam[vp_frames]

    # Order rows by nearest viewpoint (points in no submap last), keeping voxel order within each.
    from scipy.spatial import cKDTree

    _, owner = cKDTree(T_map_viewpoint[:, :3, 3]).query(
        points.astype(np.float64), k=1, distance_upper_bound=params.radius
    )
    order = np.argsort(owner, kind="stable")
    points, reflectance = points[order], reflectance[order]
    offsets, indices = submap_index(points, T_map_viewpoint[:, :3, 3], params.radius)

    S = len(vp_frames)
    if declared is None:
        environment, why = environment_from_openness(openness)
        declared = environment, f"scan ranges: {why}"
    environment, environment_source = declared
    lidar_map = LidarMap(
        points=points,
        reflectance=reflectance,
        features=np.zeros((len(points), 0), np.float16),
        descriptors=np.zeros((S, 0), np.float32),
        T_map_viewpoint=T_map_viewpoint,
        submap_offsets=offsets,
        submap_indices=indices,
        viewpoint_frame_ids=vp_frames,
        params={
            **asdict(params),
            "environment": environment,
            "environment_source": environment_source,
            "sequence": str(seq.root.resolve()),
            "num_frames": len(seq),
            "num_scans_fused": len(frames),
            "viewpoint": f"pose of camera {seq.cam} (optical frame), T_world_cam; map frame = poses.txt world",
            "point_order": "by nearest viewpoint, then voxel key",
            "feature_model": feature_model,
        },
    )
    if feature_fn is not None:
        lidar_map = compute_features(lidar_map, feature_fn, progress=progress)
    return lidar_map
