"""Map-time features: the trained point encoder run over every submap of a map (``build-map --model``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..geometry import PinholeCamera, invert
from ..map.builder import FeatureFn
from ..map.store import Submap
from .dataset import frustum_mask
from .network import load_network

__all__ = ["submap_feature_fn"]

# KITTI's rectified colour camera, for the descriptor region when a map is built without intrinsics.
KITTI_LIKE = PinholeCamera.from_params(1241, 376, 718.856, 718.856, 607.19, 185.22)


def submap_feature_fn(model_dir: str | Path, camera: PinholeCamera | None = None) -> FeatureFn:
    """``feature_fn(submap) -> (features (n, D) float32, descriptor (Dg,) float32)`` for the map builder.

    Per-point features come from the whole submap (each point with its full neighbourhood); the global
    descriptor from the part of it inside the viewpoint camera's widened frustum, the same region a
    training frame covers, so an image retrieves the submap seen from a similar place and heading.
    """
    net, _ = load_network(model_dir)
    encoder = net.point_encoder.eval()
    cam = camera or KITTI_LIKE

    @torch.no_grad()
    def feature_fn(sub: Submap) -> tuple[np.ndarray, np.ndarray]:
        origin = sub.T_map_viewpoint[:3, 3]
        full = encoder.encode_cloud(sub.points, sub.reflectance, origin)
        view = frustum_mask(sub.points, invert(sub.T_map_viewpoint), cam)
        if view.sum() >= 16:
            descriptor = encoder.encode_cloud(sub.points[view], sub.reflectance[view], origin).global_descriptor
        else:
            descriptor = full.global_descriptor
        return full.features.numpy().astype(np.float32), descriptor.numpy().astype(np.float32)

    return feature_fn
