"""Which submaps to match an image against: by a prior position, or by global-descriptor similarity.

Both read only the small per-submap arrays (viewpoint poses, descriptors), never the points.
"""

from __future__ import annotations

import numpy as np

from .store import LidarMap

__all__ = ["nearest_submaps", "top_k_by_descriptor"]


def _label(lidar_map: LidarMap) -> str:
    return str(lidar_map.path) if lidar_map.path else "map"


def nearest_submaps(lidar_map: LidarMap, position: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` submaps whose viewpoints are nearest to ``position`` (3-vector, or a 4x4 ``T_map_x`` pose).

    Returns ``(ids (k',) int64, distances (k',) float64 in metres)``, nearest first; ``k' = min(k, S)``.
    """
    p = np.asarray(position, dtype=np.float64)
    if p.shape == (4, 4):
        p = p[:3, 3]
    if p.shape != (3,) or not np.isfinite(p).all():
        raise ValueError(f"nearest_submaps: position must be a finite 3-vector or 4x4 pose, got {p.tolist()}")
    if k < 1:
        raise ValueError(f"nearest_submaps: k must be >= 1, got {k}")
    d = np.linalg.norm(lidar_map.viewpoint_positions - p, axis=1)
    ids = np.argsort(d, kind="stable")[:k].astype(np.int64)
    return ids, d[ids]


def top_k_by_descriptor(lidar_map: LidarMap, query_descriptor: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` submaps whose global descriptors are most cosine-similar to ``query_descriptor``.

    Returns ``(ids (k',) int64, similarities (k',) float64 in [-1, 1])``, best first. A zero descriptor (query or
    submap) has similarity 0 to everything.
    """
    Dg = lidar_map.descriptor_dim
    if Dg == 0:
        raise ValueError(
            f"{_label(lidar_map)}: map has no global descriptors (descriptor_dim 0); build it with a model "
            "(ep2p-loc build-map --model) to retrieve by descriptor, or use nearest_submaps with a prior pose"
        )
    q = np.asarray(query_descriptor, dtype=np.float64).reshape(-1)
    if q.shape != (Dg,):
        raise ValueError(f"top_k_by_descriptor: query has {q.size} dimensions, the map's descriptors have {Dg}")
    if not np.isfinite(q).all():
        raise ValueError("top_k_by_descriptor: query descriptor contains NaN/Inf")
    if k < 1:
        raise ValueError(f"top_k_by_descriptor: k must be >= 1, got {k}")
    D = np.asarray(lidar_map.descriptors, dtype=np.float64)  # (S, Dg): small, read in full
    norms = np.linalg.norm(D, axis=1) * np.linalg.norm(q)
    sims = np.divide(D @ q, norms, out=np.zeros(len(D)), where=norms > 0)
    ids = np.argsort(-sims, kind="stable")[:k].astype(np.int64)
    return ids, sims[ids]
