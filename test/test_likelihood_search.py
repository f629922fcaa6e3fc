"""Starts found by the patch likelihood alone: the batched likelihood, the grid and the climb."""

from __future__ import annotations

import math

import numpy as np
import torch

from ep2p_loc_ros.geometry import PinholeCamera, make_T, rotvec_to_matrix
from ep2p_loc_ros.likelihood_search import LikelihoodSearch, _grid, search_by_likelihood
from ep2p_loc_ros.model.config import ModelConfig
from ep2p_loc_ros.model.heads import MatchingHead, patch_index
from ep2p_loc_ros.pose_hypotheses import PatchLikelihood

MC = ModelConfig()
ROWS, COLS = MC.grid_size
CAM_NET = PinholeCamera(MC.image_width, MC.image_height, np.array([[554.0, 0, 319.5], [0, 554.0, 95.5], [0, 0, 1]]))


def _street(n: int = 3000, seed: int = 3) -> np.ndarray:
    """Points on two facades 6 m either side of a camera at the origin looking down +z (y down), 2-60 m ahead,
    and on the road: what a car's camera sees of a street."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(2, 60, n)
    side = rng.choice([-6.0, 6.0], n)
    y = rng.uniform(-6.0, 1.5, n)
    road = rng.random(n) < 0.3
    x = np.where(road, rng.uniform(-6, 6, n), side)
    return np.c_[x, np.where(road, 1.5, y), z]


def _table(X: np.ndarray, T_map_cam: np.ndarray, max_points: int = 2000) -> PatchLikelihood:
    """A likelihood whose points' features describe, blurred over a few patches (as a trained matcher's do), the
    patch the camera at ``T_map_cam`` sees each in (points it does not see describe nothing)."""
    torch.manual_seed(1)
    head = MatchingHead(MC)
    patches = torch.nn.functional.normalize(torch.randn(MC.feature_dim, ROWS * COLS), dim=0)
    proj = CAM_NET.project((X - T_map_cam[:3, 3]) @ T_map_cam[:3, :3])
    true_patch = patch_index(torch.from_numpy(proj.uv.astype(np.float32)), MC).clamp(0, ROWS * COLS - 1).numpy()
    rc = np.stack(np.divmod(np.arange(ROWS * COLS), COLS), 1)
    d2 = ((rc[true_patch][:, None, :] - rc[None]) ** 2).sum(-1)
    weights = torch.from_numpy(np.exp(-d2 / (2 * 2.5**2)).astype(np.float32))  # (points, patches), 2.5 patches
    features = torch.nn.functional.normalize(weights @ patches.T, dim=1)
    features *= torch.from_numpy(proj.in_image.astype(np.float32))[:, None]
    return PatchLikelihood.from_features(head, X, features, patches.view(MC.feature_dim, ROWS, COLS), max_points)


def _moved(T: np.ndarray, along: float, lateral: float, yaw_deg: float) -> np.ndarray:
    """``T`` turned about its camera's vertical, then moved along and across its axis."""
    out = T.copy()
    out[:3, :3] = T[:3, :3] @ rotvec_to_matrix(np.array([0.0, math.radians(yaw_deg), 0.0]))
    out[:3, 3] += along * out[:3, 2] + lateral * out[:3, 0]
    return out


def _errors(T: np.ndarray, G: np.ndarray) -> tuple[float, float]:
    cos = (np.trace(T[:3, :3].T @ G[:3, :3]) - 1.0) / 2.0
    return float(np.linalg.norm(T[:3, 3] - G[:3, 3])), math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def test_the_batched_likelihood_is_each_poses_likelihood():
    """``mean_log_ratios`` gives :meth:`mean_log_ratio`'s value at each pose (compiled in one pass), 0 at a pose
    that sees none of the points, and the same through the distortion path."""
    X = _street()
    G = make_T(np.eye(3), np.array([0.5, 0.0, 3.0]))
    table = _table(X, G)
    rng = np.random.default_rng(4)
    poses = [_moved(G, *rng.uniform([-8, -3, -30], [8, 3, 30])) for _ in range(40)]
    poses.append(_moved(G, 0.0, 0.0, 180.0) @ make_T(np.eye(3), np.array([0.0, 0.0, 200.0])))  # sees nothing
    one_by_one = np.array([table.mean_log_ratio(T, CAM_NET) for T in poses])
    batched = table.mean_log_ratios(np.array(poses), CAM_NET)
    np.testing.assert_allclose(batched, one_by_one, rtol=0, atol=1e-12)
    assert batched[-1] == 0.0 and batched[0] != 0.0
    distorted = PinholeCamera(CAM_NET.width, CAM_NET.height, CAM_NET.K, np.array([1e-300, 0, 0, 0, 0]))
    np.testing.assert_allclose(table.mean_log_ratios(np.array(poses[:5]), distorted), one_by_one[:5], atol=1e-12)
    assert table.mean_log_ratios(np.zeros((0, 4, 4)), CAM_NET).shape == (0,)


def test_the_grid_turns_each_base_then_moves_it_along_and_across_its_turned_axis():
    base = _moved(np.eye(4), 1.0, 2.0, 15.0)
    search = LikelihoodSearch(along_m=4.0, along_step_m=2.0, lateral_m=3.0, turn_deg=20.0, turn_step_deg=10.0)
    grid = _grid([base, np.eye(4)], search)
    assert grid.shape == (2 * 5 * 5 * 3, 4, 4)  # bases x turns x along x across
    expected = {
        (round(a, 6), round(s, 6), round(y, 6))
        for a in (-4, -2, 0, 2, 4)
        for s in (-3, 0, 3)
        for y in (-20, -10, 0, 10, 20)
    }
    found = set()
    for T in grid[:75]:
        R = base[:3, :3].T @ T[:3, :3]
        yaw = math.degrees(math.atan2(R[0, 2], R[0, 0]))
        offset = T[:3, 3] - base[:3, 3]
        found.add((round(float(offset @ T[:3, 2]), 6), round(float(offset @ T[:3, 0]), 6), round(yaw, 6)))
        np.testing.assert_allclose(R[1], [0.0, 1.0, 0.0], atol=1e-12)  # about the camera's own vertical only
    assert found == expected
    assert len(_grid([base], LikelihoodSearch(along_m=0.0, lateral_m=0.0, turn_deg=0.0))) == 1


def test_the_search_finds_a_camera_metres_and_degrees_from_every_base():
    """The true camera is 5.5 m along, 0.4 m across and 13 deg turned from the nearest base, between the grid's
    points: the best grid pose is 1.5 m and 3 deg off, and the climb brings it within half a metre and a degree.
    Poses that climb to one are kept once; none asked, none given."""
    X = _street()
    G = make_T(np.eye(3), np.array([0.5, 0.0, 3.0]))
    table = _table(X, G)
    bases = [_moved(G, -5.5, -0.4, 13.0), _moved(G, 25.0, 0.0, 0.0)]
    assert min(_errors(B, G)[0] for B in bases) > 5.0 and _errors(bases[0], G)[1] > 12.0
    search = LikelihoodSearch()
    grid = _grid(bases, search)
    best_grid = grid[int(np.argmax(table.mean_log_ratios(grid, CAM_NET)))]
    assert _errors(best_grid, G)[0] > 1.0 and _errors(best_grid, G)[1] > 2.0
    found = search_by_likelihood(table, CAM_NET, bases, 3, search)
    assert 1 <= len(found) <= 3
    dt, dr = _errors(found[0], G)
    assert dt < 0.5 and dr < 1.0, (dt, dr)
    assert table.mean_log_ratios(np.array(found[:1]), CAM_NET)[0] > table.mean_log_ratios(best_grid[None], CAM_NET)[0]
    for i in range(len(found)):
        for j in range(i):
            apart = _errors(found[i], found[j])
            assert apart[0] > search.distinct_m or apart[1] > search.distinct_deg
    assert search_by_likelihood(table, CAM_NET, bases, 0, search) == []
