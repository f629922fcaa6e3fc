"""Headings from a Manhattan world: where walls meet at right angles, the image's lines and the map's walls each
tell the camera's heading up to a multiple of 90°.

Why: an indoor camera turned away from every map viewpoint (into a room off the mapped corridor) is not recognised by
the matcher, and the reflectance alignment only holds the right pose from a start within a few degrees and about a
metre of it (models/README.md, "Session 42"). Buildings are mostly Manhattan: the lines of door frames, shelves and
ceiling tiles run along two horizontal directions at right angles, and so do the map's walls. The direction of the
image's horizontal lines about the camera's vertical (from their vanishing points) and that of the walls seen from a
viewpoint give the camera's turn from that viewpoint modulo 90°: two or three headings to start the alignment from
instead of a blind sweep.

Conventions as :func:`.pose_hypotheses.turned_by`: a turn is about the camera's own y axis (image "down", the
vertical of a level camera), positive from the optical axis towards the camera's x (right).
"""

from __future__ import annotations

import numpy as np

from .geometry import PinholeCamera

__all__ = ["image_line_yaw", "manhattan_turns", "mod90_gap", "wall_yaw"]

_BINS = 180  # 0.5° bins over the 90° period


def mod90_gap(a_deg: np.ndarray | float, b_deg: np.ndarray | float) -> np.ndarray | float:
    """How far apart two directions are modulo 90° (deg in [0, 45]): a Manhattan world cannot tell them further."""
    return np.abs((np.asarray(a_deg) - b_deg + 45.0) % 90.0 - 45.0)


def _dominant_mod90(angles_deg: np.ndarray, weights: np.ndarray, sigma_deg: float = 1.0) -> tuple[float, float]:
    """The peak of a weighted, circularly smoothed histogram of angles modulo 90° (deg in [0, 90)), and the share of
    the weight within 2° of it."""
    a = np.mod(angles_deg, 90.0)
    hist = np.bincount((a * (_BINS / 90.0)).astype(np.int64) % _BINS, weights=weights, minlength=_BINS)
    offsets = np.arange(-4 * 2 * sigma_deg, 4 * 2 * sigma_deg + 1)  # bins of 0.5°
    kernel = np.exp(-0.5 * (offsets * 0.5 / sigma_deg) ** 2)
    smooth = sum(k * np.roll(hist, int(o)) for o, k in zip(offsets, kernel, strict=True))
    peak = (int(np.argmax(smooth)) + 0.5) * (90.0 / _BINS)
    near = mod90_gap(a, peak) <= 2.0
    total = float(weights.sum())
    return peak, float(weights[near].sum()) / total if total > 0 else 0.0


def image_line_yaw(
    gray: np.ndarray, camera: PinholeCamera, min_length_px: float = 25.0, min_share: float = 0.2
) -> float | None:
    """The direction (deg in [0, 90)) of the scene's horizontal lines about the camera's vertical, from its optical
    axis, modulo 90°; None where too few lines agree (a share of their weight below ``min_share`` within 2°).

    Each line segment (OpenCV's LSD) and the camera centre span a plane; a horizontal line of the scene lies in it,
    which fixes that line's direction about the vertical. Segments near vertical in the image (the scene's vertical
    edges) are left out, and each segment weighs its length times how well its plane fixes a horizontal direction
    (a line at the camera's height, seen edge-on, fixes none). ``camera``: the intrinsics of ``gray`` (undistorted).
    """
    import cv2

    if gray.ndim != 2:
        raise ValueError(f"image_line_yaw: expected a grey image (H, W), got shape {gray.shape}")
    found = cv2.createLineSegmentDetector().detect(np.ascontiguousarray(gray, dtype=np.uint8))[0]
    if found is None:
        return None
    seg = found.reshape(-1, 4).astype(np.float64)
    du, dv = seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1]
    length = np.hypot(du, dv)
    slant = np.degrees(np.arctan2(np.abs(dv), np.abs(du)))  # 0: along the image rows, 90: along the columns
    keep = (length >= min_length_px) & (slant < 70.0)
    if keep.sum() < 8:
        return None
    seg, length = seg[keep], length[keep]
    fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
    ones = np.ones(len(seg))
    r1 = np.stack([(seg[:, 0] - cx) / fx, (seg[:, 1] - cy) / fy, ones], axis=1)
    r2 = np.stack([(seg[:, 2] - cx) / fx, (seg[:, 3] - cy) / fy, ones], axis=1)
    n = np.cross(r1, r2)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    # d = (-n_z, 0, n_x) is the horizontal direction in the plane; its angle from the optical axis towards x:
    yaw = np.degrees(np.arctan2(-n[:, 2], n[:, 0]))
    peak, share = _dominant_mod90(yaw, length * np.hypot(n[:, 0], n[:, 2]))
    return peak if share >= min_share else None


def wall_yaw(
    points: np.ndarray,
    T_map_cam: np.ndarray,
    neighbours: int = 12,
    max_points: int = 4000,
    min_share: float = 0.2,
    seed: int = 0,
) -> float | None:
    """The direction (deg in [0, 90)) of the walls among ``points`` (map frame) about the camera's vertical, from
    its optical axis, modulo 90°; None where they do not agree (as :func:`image_line_yaw`).

    A wall is where the points' local plane (their ``neighbours`` nearest, up to ``max_points`` drawn evenly at
    random) is flat and vertical: its normal is less than ~11° from the camera's horizontal plane."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < neighbours + 1:
        return None
    rng = np.random.default_rng(seed)
    probe = pts[rng.choice(len(pts), max_points, replace=False)] if len(pts) > max_points else pts
    _, idx = cKDTree(pts).query(probe, k=neighbours)
    local = pts[idx] - pts[idx].mean(axis=1, keepdims=True)
    evals, evecs = np.linalg.eigh(np.einsum("nki,nkj->nij", local, local))
    normal = evecs[:, :, 0] @ np.asarray(T_map_cam, dtype=np.float64)[:3, :3]  # in the camera's frame
    flat = evals[:, 0] < 0.05 * evals[:, 1]
    vertical = np.abs(normal[:, 1]) < 0.2
    keep = flat & vertical
    if keep.sum() < 20:
        return None
    # a wall's line runs at right angles to its normal: the same direction modulo 90°
    peak, share = _dominant_mod90(np.degrees(np.arctan2(normal[keep, 0], normal[keep, 2])), np.ones(int(keep.sum())))
    return peak if share >= min_share else None


def manhattan_turns(line_yaw_deg: float, wall_yaw_deg: float, max_turn_deg: float) -> list[float]:
    """The turns (deg) from a viewpoint that put the walls it sees at ``wall_yaw_deg`` along the image's lines at
    ``line_yaw_deg``: ``wall - line`` modulo 90°, every such turn within ``max_turn_deg`` either way, nearest first."""
    base = (wall_yaw_deg - line_yaw_deg) % 90.0
    turns = [base + 90.0 * k for k in range(-3, 3) if abs(base + 90.0 * k) <= max_turn_deg]
    return sorted(turns, key=abs)
