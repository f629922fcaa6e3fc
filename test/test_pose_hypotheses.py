"""Choosing between pose hypotheses: the matches' support, the patch likelihood, and the rule that weighs them."""

from __future__ import annotations

import math

import numpy as np
import torch

from ep2p_loc_ros.geometry import PinholeCamera, make_T, rotvec_to_matrix, transform_points
from ep2p_loc_ros.model.config import ModelConfig
from ep2p_loc_ros.model.heads import MatchingHead, patch_index
from ep2p_loc_ros.pose_hypotheses import PatchLikelihood, match_support, pose_agreement, rank_hypotheses

MC = ModelConfig()
ROWS, COLS = MC.grid_size
# the network image's camera: 640 x 192, 60 degrees across
CAM_NET = PinholeCamera(MC.image_width, MC.image_height, np.array([[554.0, 0, 319.5], [0, 554.0, 95.5], [0, 0, 1]]))


def _points(n: int, seed: int = 0) -> np.ndarray:
    """``n`` points 5-40 m in front of a camera at the origin, spread over its view."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(5, 40, n)
    return np.c_[rng.uniform(-0.55, 0.55, n) * z, rng.uniform(-0.16, 0.16, n) * z, z]


def test_rank_hypotheses_weighs_the_alignment_score_against_the_matchers_votes():
    """Score + weight * log(1 + support) + likelihood_weight * likelihood: a small score lead loses to several times
    the support, a large one wins; with equal support the score decides, and a tie goes to the first hypothesis
    (PnP's pose). A likelihood higher by a fraction of a nat a point outweighs both."""
    assert rank_hypotheses([0.50, 0.45], [40, 200], 0.3)[0] == 1  # 0.05 < 0.3 * log(201 / 41)
    assert rank_hypotheses([1.00, 0.45], [40, 200], 0.3)[0] == 0  # 0.55 > 0.48
    assert rank_hypotheses([0.40, 0.45, 0.42], [100, 100, 100], 0.3)[0] == 1
    assert rank_hypotheses([0.45, 0.45], [100, 100], 0.3)[0] == 0
    assert rank_hypotheses([0.50, 0.45], [0, 10**6], 0.0)[0] == 0  # weight 0: the score alone
    assert rank_hypotheses([0.50, 0.45], [200, 40], 0.3, [-1.0, 2.0], 0.3)[0] == 1  # 0.05 + 0.48 < 0.9
    assert rank_hypotheses([0.50, 0.45], [200, 40], 0.3, [-1.0, 2.0], 0.0)[0] == 0  # likelihood weight 0: ignored
    # points_weight: a pose that scores on few map points (facing a wall, off the map) loses to one that sees more
    assert rank_hypotheses([0.50, 0.45], [100, 100], 0.3, None, 0.0, [300, 3000], 0.0)[0] == 0
    assert rank_hypotheses([0.50, 0.45], [100, 100], 0.3, None, 0.0, [300, 3000], 0.5)[0] == 1  # 0.05 < 0.5 log 10
    assert rank_hypotheses([0.50, 0.45], [100, 100], 0.3, None, 0.0, [300, 330], 0.5)[0] == 0  # 0.05 > 0.5 log 1.1
    # the whole order, best first, ties to the earlier (what the finish of the best few takes)
    np.testing.assert_array_equal(rank_hypotheses([0.40, 0.45, 0.42, 0.45], [100] * 4, 0.3), [1, 3, 2, 0])
    np.testing.assert_array_equal(
        rank_hypotheses([0.50, 0.45, 0.45], [40, 200, 10], 0.3, [0.0, 0.0, 3.0], 0.3), [2, 1, 0]
    )
    # agreement_weight: a pose two other starts ended at beats a small score lead, not a large one
    common = ([0.50, 0.45, 0.30], [100] * 3, 0.3, None, 0.0, None, 0.0)
    assert rank_hypotheses(*common, [0, 2, 1], 0.0)[0] == 0
    assert rank_hypotheses(*common, [0, 2, 1], 0.2)[0] == 1  # 0.05 < 0.2 * 2
    assert rank_hypotheses([1.00, 0.45, 0.30], *common[1:], [0, 2, 1], 0.2)[0] == 0  # 0.55 > 0.4
    # near_weight: the score over the near points; a pose that sees too few of them (-inf) counts as the lowest
    common += (None, 0.0)
    assert rank_hypotheses(*common, [0.1, 0.2, 0.0], 0.0)[0] == 0
    assert rank_hypotheses(*common, [0.1, 0.2, 0.0], 2.0)[0] == 1  # 0.05 < 2 * 0.1
    inf = float("inf")
    np.testing.assert_array_equal(rank_hypotheses(*common, [-inf, 0.2, 0.25], 2.0), [0, 1, 2])  # 0.9, 0.85, 0.8
    np.testing.assert_array_equal(rank_hypotheses(*common, [-inf, 0.2, 0.4], 2.0), [2, 0, 1])  # 0.9, 0.85, 1.1
    np.testing.assert_array_equal(rank_hypotheses(*common, [-inf] * 3, 2.0), [0, 1, 2])  # none: the rest decides
    # ... or one per depth (a row a pose; one column is the same as a list), summed, each depth's -inf the lowest of
    # the others' at that depth
    rows = [[-inf, 0.2], [0.2, -inf], [0.5, 0.1]]  # -> [0.2, 0.2], [0.2, 0.1], [0.5, 0.1]
    np.testing.assert_array_equal(rank_hypotheses(*common, rows, 2.0), [2, 0, 1])  # 1.5, 1.3, 1.05
    np.testing.assert_array_equal(
        rank_hypotheses(*common, np.array(rows)[:, :1], 2.0), rank_hypotheses(*common, [-inf, 0.2, 0.5], 2.0)
    )
    # halves_weight: the scores over the left and the right half, summed, -inf as for near
    halves = np.array([[0.1, 0.1], [0.3, -inf], [0.0, 0.05]])  # -> 0.2, 0.35, 0.05
    assert rank_hypotheses(*common, None, 0.0, halves, 0.0)[0] == 0
    np.testing.assert_array_equal(rank_hypotheses(*common, None, 0.0, halves, 1.0), [1, 0, 2])  # 0.7, 0.8, 0.35
    np.testing.assert_array_equal(rank_hypotheses(*common, rows, 2.0, halves, 1.0), [2, 0, 1])  # 1.55, 1.5, 1.4


def test_pose_agreement_counts_the_other_poses_within_the_radius_and_angle():
    """Each pose's count of the others within ``radius_m`` and ``max_deg``: a cluster of three counts two each,
    a pose at the same place turned by more than the angle and one farther than the radius count none."""
    T0 = make_T(rotvec_to_matrix(np.array([0.1, -0.4, 0.2])), np.array([10.0, -3.0, 1.5]))

    def moved(t: list[float], deg: float, axis: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
        """T0 moved by ``t`` (its own frame) and turned ``deg`` about the unit ``axis``."""
        return T0 @ make_T(rotvec_to_matrix(np.radians(deg) * np.asarray(axis)), np.asarray(t, dtype=np.float64))

    poses = [
        T0,
        moved([0.6, 0.0, 0.0], 2.0),  # 0.6 m and 2 degrees from T0
        moved([0.0, -0.5, 0.0], 3.0, (1.0, 0.0, 0.0)),  # 0.5 m and 3 degrees from T0, 0.78 m and 3.6 from T1
        moved([0.0, 0.0, 0.0], 8.0),  # T0's position, turned 8 degrees (6 from T1, 8.5 from T2)
        moved([0.0, 0.0, 1.2], 0.0),  # T0's heading, 1.2 m ahead (1.3 m and more from the others)
    ]
    np.testing.assert_array_equal(pose_agreement(poses, 1.0, 5.0), [2, 2, 2, 0, 0])
    np.testing.assert_array_equal(pose_agreement(poses, 1.0, 10.0), [3, 3, 3, 3, 0])  # the turned one joins
    np.testing.assert_array_equal(pose_agreement(poses, 1.25, 5.0), [3, 2, 2, 0, 1])  # ... the one ahead joins T0
    np.testing.assert_array_equal(pose_agreement(poses[:1], 1.0, 5.0), [0])
    assert pose_agreement([], 1.0, 5.0).shape == (0,)


def test_match_support_counts_the_matches_a_pose_reprojects_within_the_radius():
    """Matches that reproject within the radius count; those off by more, or behind the camera, do not."""
    T = make_T(np.eye(3), np.array([3.0, -1.0, 2.0]))
    X_cam = _points(50)
    X = transform_points(T, X_cam)
    px = CAM_NET.project(X_cam).uv
    px[:10] += [6.0, 0.0]  # 6 px off
    assert match_support(X, px, T, CAM_NET, 5.0) == 40
    assert match_support(X, px, T, CAM_NET, 7.0) == 50
    behind = T @ make_T(np.eye(3), np.array([0.0, 0.0, 60.0]))  # every point now behind the camera
    assert match_support(X, px, behind, CAM_NET, 1e6) == 0
    assert match_support(np.zeros((0, 3)), np.zeros((0, 2)), T, CAM_NET, 5.0) == 0


def _head_and_patches(seed: int = 1) -> tuple[MatchingHead, torch.Tensor]:
    torch.manual_seed(seed)
    head = MatchingHead(MC)
    patches = torch.nn.functional.normalize(torch.randn(MC.feature_dim, ROWS * COLS), dim=0)
    return head, patches.view(MC.feature_dim, ROWS, COLS)


def test_the_patch_likelihood_is_the_log_mass_of_each_points_3x3_window_against_a_uniform_guess():
    """Against its definition, computed the slow way: each point's softmax over all patches, the mass of the 3x3
    patches around where the pose projects it (cut at the grid's border), log of 9 / P times less, averaged over
    the points in the image."""
    head, patches = _head_and_patches()
    X = _points(300, seed=2)
    X[:20, 0] += 100.0  # outside the view: not counted
    features = torch.randn(len(X), MC.feature_dim) * 0.3
    T = make_T(np.eye(3), np.array([0.4, 0.1, -0.5]))
    X_map = transform_points(T, X)
    table = PatchLikelihood.from_features(head, X_map, features, patches, max_points=len(X))
    proj = CAM_NET.project(X)
    prob = torch.softmax(head.in_image_logits(features, patches), 1).double().numpy().reshape(len(X), ROWS, COLS)
    values = []
    for i in np.flatnonzero(proj.in_image):
        p = int(patch_index(torch.from_numpy(proj.uv[i : i + 1].astype(np.float32)), MC)[0])
        r, c = divmod(p, COLS)
        mass = prob[i, max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].sum()
        values.append(math.log(mass * ROWS * COLS / 9))
    assert len(values) == 280
    assert math.isclose(table.mean_log_ratio(T, CAM_NET), float(np.mean(values)), abs_tol=1e-4)


def test_the_patch_likelihood_is_highest_at_the_pose_the_distributions_describe():
    """Each point's features are the features of the patch the true camera sees it in: the likelihood there is near
    its ceiling (log of P / 9), a pose 2 m to the side or turned 5 degrees scores far less, features that describe
    nothing score 0, features sure of other patches far below 0, and a pose that sees none of the points scores 0
    (no evidence)."""
    head, patches = _head_and_patches()
    X = _points(2000, seed=3)
    flat = patches.view(MC.feature_dim, -1)
    true_patch = patch_index(torch.from_numpy(CAM_NET.project(X).uv.astype(np.float32)), MC)
    features = flat[:, true_patch].T.contiguous()
    table = PatchLikelihood.from_features(head, X, features, patches, max_points=1000)
    assert len(table.points) == 1000  # thinned evenly
    ceiling = math.log(ROWS * COLS / 9)
    at_truth = table.mean_log_ratio(np.eye(4), CAM_NET)
    yaw = math.radians(5.0)
    turned = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    side = table.mean_log_ratio(make_T(np.eye(3), np.array([2.0, 0.0, 0.0])), CAM_NET)
    turn = table.mean_log_ratio(make_T(turned, np.zeros(3)), CAM_NET)
    assert at_truth > ceiling - 0.5, (at_truth, ceiling)
    assert side < at_truth - 2.0 and turn < at_truth - 2.0, (at_truth, side, turn)
    blank = PatchLikelihood.from_features(head, X, torch.zeros_like(features), patches, max_points=1000)
    assert -0.05 < blank.mean_log_ratio(np.eye(4), CAM_NET) <= 1e-6  # uniform: no evidence (less at the border)
    shuffled = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(0))]
    wrong = PatchLikelihood.from_features(head, X, shuffled, patches, max_points=1000)
    assert wrong.mean_log_ratio(np.eye(4), CAM_NET) < -2.0  # sure of other patches: evidence against
    away = make_T(np.eye(3), np.array([0.0, 0.0, 100.0]))  # every point behind the camera
    assert table.mean_log_ratio(away, CAM_NET) == 0.0


def test_the_compiled_projection_sees_the_points_and_patches_that_project_and_patch_index_give():
    """A pinhole network camera's points go through one compiled pass (``_pinhole_patches``); a camera with
    distortion through ``PinholeCamera.project``. With a zero distortion vector both paths must agree exactly, on
    points in view, behind the camera, beside the image and on the image's border, and so must the likelihood."""
    from ep2p_loc_ros.pose_hypotheses import _pinhole_patches

    rng = np.random.default_rng(7)
    X = np.r_[_points(3000, seed=5) * rng.uniform(0.5, 1.6, (3000, 1)), -_points(200, seed=6)]
    # points 12 m away whose pixels fall on the image's edges and on patch borders
    uv = np.array([[-0.5, 10.0], [CAM_NET.width - 0.5, 10.0], [7.5, -0.5], [15.5, 95.5], [100.0, 191.49]])
    K = CAM_NET.K
    X = np.r_[X, np.c_[(uv[:, 0] - K[0, 2]) / K[0, 0], (uv[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(uv))] * 12.0]
    T = make_T(np.eye(3), np.array([0.3, -0.2, 0.5]))
    X = transform_points(T, X)  # (camera frame above) into the map
    T_cam_map = np.linalg.inv(T)
    rows, patches = _pinhole_patches(
        X, T_cam_map[:3, :3].copy(), T_cam_map[:3, 3].copy(), CAM_NET.K, 640.0, 192.0, 8.0, ROWS, COLS
    )
    proj = CAM_NET.project(transform_points(T_cam_map, X))
    expected_rows = np.flatnonzero(proj.in_image)
    expected = patch_index(torch.from_numpy(proj.uv[expected_rows].astype(np.float32)), MC).numpy()
    assert 1000 < len(rows) < len(X) - 200
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(patches, expected)
    head, patch_features = _head_and_patches()
    table = PatchLikelihood.from_features(head, X, torch.randn(len(X), MC.feature_dim) * 0.3, patch_features, 4000)
    distorted = PinholeCamera(CAM_NET.width, CAM_NET.height, CAM_NET.K, np.array([1e-300, 0, 0, 0, 0]))
    assert distorted.has_distortion
    assert table.mean_log_ratio(T, CAM_NET) == table.mean_log_ratio(T, distorted)
