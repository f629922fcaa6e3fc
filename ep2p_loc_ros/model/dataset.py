"""Training samples from KITTI-layout sequences (or their training packs, ``training_pack.py``): image, the map
points around the camera, and 2D targets.

Each sequence is fused into a map once (the map builder, without features). A sample is one frame:
- the image at the network size and the camera scaled to it;
- the map points that matter for it: inside a widened view frustum up to ``max_depth``, voxelised to the
  point encoder's density, relative to a "viewpoint" near the camera (what the map stores per submap);
- which of those points the camera really sees (IPR at the true pose, as in the paper) and their true pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets.kitti_odometry import KittiOdometrySequence
from ..geometry import PinholeCamera, invert, transform_points
from ..ipr import IPRConfig, visible_mask
from .config import ModelConfig
from .point_encoder import PointGraph, voxel_downsample
from .preprocess import prepare_image

__all__ = ["FrameSample", "SequenceData", "SequenceFrames", "frustum_mask", "load_sequences"]


def frustum_mask(
    points: np.ndarray, T_cam_map: np.ndarray, camera: PinholeCamera, max_depth: float = 40.0, margin: float = 3.0
) -> np.ndarray:
    """Points inside the camera's view frustum widened by ``margin`` metres, up to ``max_depth``.

    The region a frame's points come from in training, and the region a submap's descriptor is pooled over
    at map time (the viewpoint camera's frustum), so both describe the same kind of view.
    """
    pc = transform_points(T_cam_map, np.asarray(points, dtype=np.float64))
    z = pc[:, 2]
    tan_x = (camera.width / 2) / camera.fx
    tan_y = (camera.height / 2) / camera.fy
    keep = (z > -margin) & (z < max_depth) & (np.abs(pc[:, 0]) < z.clip(0) * tan_x + margin)
    return keep & (np.abs(pc[:, 1]) < z.clip(0) * tan_y + margin)


@dataclass(frozen=True)
class FrameSample:
    image: np.ndarray  # (3, h, w) float32 in [0, 1] (float16 in the frozen-encoder training cache)
    camera: PinholeCamera  # network-size camera
    T_cam_map: np.ndarray  # (4, 4) true pose (map -> camera optical frame)
    points_map: np.ndarray  # (N, 3) float64 map-frame points (voxelised)
    points_local: np.ndarray  # (N, 3) float32 relative to the viewpoint (map axes): the point encoder's input
    reflectance: np.ndarray  # (N,) float32
    visible: np.ndarray  # (N,) bool: seen by the camera (in image and not occluded)
    uv: np.ndarray  # (N, 2) float32 true network-image pixels (NaN behind the camera)
    sequence: str
    frame: int
    # Set only in the frozen-encoder training cache (:func:`..train.freeze_sample`): the point encoder's output,
    # computed once on the whole crop, for the rows kept here.
    point_features: np.ndarray | None = None  # (N, D) float16
    point_descriptor: np.ndarray | None = None  # (G,) float32 global submap descriptor
    # (N, C) float16: PointContext.pool over the whole crop, for the rows kept (when the model has the module)
    point_context: np.ndarray | None = None
    # Set when a loader worker built the point encoder's kNN graph beside the sample (``TrainConfig.workers``)
    point_graph: PointGraph | None = None


class SequenceFrames:
    """A KITTI-layout sequence as training reads it: its map fused by the map builder, poses, full-size images."""

    def __init__(self, root: str | Path, map_voxel: float = 0.2, progress: bool = True) -> None:
        from ..map import MapBuildParams, build_map

        self.seq = KittiOdometrySequence(Path(root))
        self.root = self.seq.root
        lidar_map = build_map(self.seq, MapBuildParams(voxel=map_voxel), progress=progress)
        self.points, self.reflectance = lidar_map.points, lidar_map.reflectance
        self.camera = self.seq.calib.camera

    def __len__(self) -> int:
        return len(self.seq)

    def T_world_cam(self, i: int) -> np.ndarray:
        return self.seq.T_world_cam(i)

    def network_image(self, i: int, config: ModelConfig) -> tuple[np.ndarray, PinholeCamera]:
        return prepare_image(self.seq.image(i), self.camera, config, source=str(self.seq.image_paths[i]))


class SequenceData:
    """One sequence (a KITTI-layout directory or a training pack file) with its fused map and a KD-tree over it."""

    def __init__(self, root: str | Path, map_voxel: float = 0.2, progress: bool = True) -> None:
        from scipy.spatial import cKDTree

        from .training_pack import TrainingPack

        root = Path(root)
        self.frames = TrainingPack(root, map_voxel) if root.is_file() else SequenceFrames(root, map_voxel, progress)
        self.points = np.asarray(self.frames.points, dtype=np.float64)
        self.reflectance = np.asarray(self.frames.reflectance, dtype=np.float32)
        self.tree = cKDTree(self.points)
        self.camera = self.frames.camera

    def __len__(self) -> int:
        return len(self.frames)

    def sample(
        self,
        i: int,
        config: ModelConfig,
        rng: np.random.Generator,
        max_depth: float = 40.0,
        viewpoint_jitter: float = 3.0,
        ipr: IPRConfig | None = None,
    ) -> FrameSample:
        T_map_cam = self.frames.T_world_cam(i)
        T_cam_map = invert(T_map_cam)
        cam_pos = T_map_cam[:3, 3]
        idx = np.asarray(self.tree.query_ball_point(cam_pos, max_depth), dtype=np.int64)
        pts, refl = self.points[idx], self.reflectance[idx]
        # Widened frustum: the encoder's context reaches a few metres past the image border.
        keep = frustum_mask(pts, T_cam_map, self.camera, max_depth)
        pts, refl = pts[keep], refl[keep]
        pts_v, refl_v, _ = voxel_downsample(pts, refl, config.point_voxel)
        viewpoint = cam_pos + np.append(rng.uniform(-viewpoint_jitter, viewpoint_jitter, 2), 0.0)
        visible = visible_mask(pts_v, T_cam_map, self.camera, ipr or IPRConfig())
        image, cam_net = self.frames.network_image(i, config)
        proj = cam_net.project(transform_points(T_cam_map, pts_v))
        return FrameSample(
            image=image[0],
            camera=cam_net,
            T_cam_map=T_cam_map,
            points_map=pts_v,
            points_local=(pts_v - viewpoint).astype(np.float32),
            reflectance=refl_v.astype(np.float32),
            visible=visible,
            uv=proj.uv.astype(np.float32),
            sequence=str(self.frames.root),
            frame=i,
        )


def load_sequences(roots: list[str | Path], progress: bool = True) -> list[SequenceData]:
    return [SequenceData(r, progress=progress) for r in roots]
