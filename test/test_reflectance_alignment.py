"""Reflectance alignment: a pose off along its optical axis comes back to where the map's reflectance fits the image."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ep2p_loc_ros.geometry import (
    PinholeCamera,
    invert,
    make_T,
    matrix_to_rotvec,
    moved_in_view,
    rotvec_to_matrix,
    transform_points,
)
from ep2p_loc_ros.gravity import GravityPrior, down_in_camera
from ep2p_loc_ros.ipr import IPRConfig, visible_mask
from ep2p_loc_ros.reflectance_alignment import (
    AlignmentConfig,
    _ascent_directions,
    _ascent_move_levels,
    _cells_joint,
    _moved,
    _Scorer,
    _Search,
    _view,
    align_to_reflectance,
    chance_mi,
    mutual_information,
    part_scores,
    prepare_alignment_image,
    prepare_alignment_points,
    reflectance_contrast,
    scores_at,
)

CAM = PinholeCamera.from_params(480, 180, 240.0, 240.0, 239.5, 89.5)


def _paint(p: np.ndarray) -> np.ndarray:
    """Albedo of the corridor's surfaces: a random grey per 0.5 m cell (sharp edges, like paint and signs)."""
    cell = np.floor(p / 0.5).astype(np.int64)
    h = (cell[..., 0] * 73856093) ^ (cell[..., 1] * 19349663) ^ (cell[..., 2] * 83492791)
    return (h % 997) / 996.0


def _corridor_hits(dirs: np.ndarray) -> np.ndarray:
    """Where rays from the origin along ``dirs`` (..., 3; x right, y down, z forward) first hit a street: the road
    1.6 m below, facades 5 m to either side, and a wall 40 m ahead."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = np.stack(
            [
                np.where(dirs[..., 1] > 0, 1.6 / dirs[..., 1], np.inf),
                np.where(dirs[..., 0] > 0, 5.0 / dirs[..., 0], np.inf),
                np.where(dirs[..., 0] < 0, -5.0 / dirs[..., 0], np.inf),
                np.where(dirs[..., 2] > 0, 40.0 / dirs[..., 2], np.inf),
            ]
        )
    return dirs * ts.min(0)[..., None]


@pytest.fixture(scope="module")
def street():
    """The map (points of that street with reflectance = albedo) and the image a camera at the origin takes."""
    rng = np.random.default_rng(0)
    g = np.arange(0.05, 40.0, 0.1)
    road = np.stack(np.meshgrid(np.arange(-5, 5, 0.1), [1.6], g), -1).reshape(-1, 3)
    side = np.stack(np.meshgrid([5.0], np.arange(-4, 1.6, 0.1), g), -1).reshape(-1, 3)
    points = np.concatenate([road, side, side * [-1, 1, 1]]) + rng.normal(0, 0.01, (1, 3))
    reflectance = 0.1 + 0.8 * _paint(points)
    v, u = np.mgrid[0 : CAM.height, 0 : CAM.width]
    dirs = np.stack([(u - CAM.cx) / CAM.fx, (v - CAM.cy) / CAM.fy, np.ones(u.shape)], -1)
    shading = 0.5 + 0.5 * rng.random()  # the camera's grey level is the albedo, lit, with noise
    grey = 255 * shading * (0.2 + 0.7 * _paint(_corridor_hits(dirs))) + rng.normal(0, 3, u.shape)
    rgb = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return points, reflectance, rgb


def _off(d: np.ndarray) -> np.ndarray:
    return make_T(rotvec_to_matrix(np.radians(d[3:])), d[:3])


def test_mutual_information_is_zero_for_independent_variables_and_the_entropy_for_equal_ones():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 16, 20000), rng.integers(0, 16, 20000)
    assert abs(mutual_information(a, b, 16)) < 0.005  # the bias correction takes the chance dependence out
    assert mutual_information(a, a, 16) == pytest.approx(np.log(16), abs=0.02)
    assert mutual_information(a[:0], b[:0], 16) == -np.inf


@pytest.mark.parametrize(
    "offset",
    [
        [0.0, 0.0, 3.0, 0.0, 0.0, 0.0],  # ahead along the axis: the matcher's typical error after retrieval
        [0.3, 0.0, -4.0, 0.0, 0.0, 0.0],  # behind and a little to the side
        [0.0, 0.0, -4.0, 0.0, 1.0, 0.0],  # behind and turned
        [-0.2, 0.1, 1.5, 0.5, -0.5, 0.3],
    ],
)
def test_alignment_brings_a_pose_off_along_its_axis_back_to_the_true_one(street, offset):
    points, reflectance, rgb = street
    start = _off(np.array(offset))
    res = align_to_reflectance(rgb, CAM, points, reflectance, start, AlignmentConfig())
    assert res.ok, res.message
    t_err = np.linalg.norm(res.T_map_cam[:3, 3])
    r_err = np.degrees(np.linalg.norm(matrix_to_rotvec(res.T_map_cam[:3, :3])))
    assert t_err < 0.25 and r_err < 0.5, (t_err, r_err)
    assert res.score > res.start_score


def test_alignment_does_not_move_the_true_pose(street):
    points, reflectance, rgb = street
    res = align_to_reflectance(rgb, CAM, points, reflectance, np.eye(4), AlignmentConfig())
    assert res.ok
    assert np.linalg.norm(res.T_map_cam[:3, 3]) < 0.1


def test_alignment_cannot_find_a_pose_in_an_image_unrelated_to_the_map(street):
    """Noise has no information about the map: the start pose has no better-scoring rival worth the name."""
    points, reflectance, _ = street
    noise = np.random.default_rng(2).integers(0, 256, (CAM.height, CAM.width, 3), dtype=np.uint8)
    res = align_to_reflectance(noise, CAM, points, reflectance, np.eye(4), AlignmentConfig())
    assert res.score < 0.02  # nats: nothing to align to


def test_alignment_keeps_the_start_pose_with_too_few_points_and_ignores_nan_points(street):
    points, reflectance, rgb = street
    start = _off(np.array([0.0, 0.0, 2.0, 0.0, 0.0, 0.0]))
    few = align_to_reflectance(rgb, CAM, points[:100], reflectance[:100], start, AlignmentConfig())
    assert not few.ok and "points" in few.message
    np.testing.assert_array_equal(few.T_map_cam, start)
    bad = points.copy()
    bad[::7] = np.nan
    res = align_to_reflectance(rgb, CAM, bad, reflectance, start, AlignmentConfig())
    assert res.ok and np.linalg.norm(res.T_map_cam[:3, 3]) < 0.25


@pytest.mark.parametrize("offset", [[0.0, 0.0, -3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.5, 0.0, 0.5, 0.0]])
def test_a_refine_round_searches_along_the_axis_again_from_where_the_ascent_ended(street, offset):
    """Without a first search along the axis, the ascent alone stops metres off; a refine round's search along
    the axis around where it stopped, and its ascent, bring the pose back."""
    points, reflectance, rgb = street
    start = _off(np.array(offset))
    ascent_only = AlignmentConfig(forward_range_m=0.0, refine_rounds=0)
    stuck = align_to_reflectance(rgb, CAM, points, reflectance, start, ascent_only)
    assert stuck.ok and np.linalg.norm(stuck.T_map_cam[:3, 3]) > 1.0
    refined = align_to_reflectance(
        rgb, CAM, points, reflectance, start, replace(ascent_only, refine_rounds=1, refine_range_m=4.0)
    )
    assert refined.ok and np.linalg.norm(refined.T_map_cam[:3, 3]) < 0.25
    assert refined.evaluations > stuck.evaluations


@pytest.mark.parametrize("offset", [[-0.11, -0.18, -2.71, 1.5, 0.46, -0.8], [0.16, 0.17, 2.54, -0.52, 1.47, -0.94]])
def test_a_spread_refine_round_climbs_from_several_places_along_the_axis(street, offset):
    """Off in all six parameters, with no first search: the ascent from the refine line's best candidate ends metres
    off (the rotation and sideways offset bias where along the axis the score peaks); ascents from candidates spread
    along the line, the best end rescored on what it sees, find the true pose (found by sampling such starts: of 60,
    18 went from > 0.5 m to < 0.15 m off and none the other way)."""
    points, reflectance, rgb = street
    start = _off(np.array(offset))
    line_best = AlignmentConfig(forward_range_m=0.0, refine_range_m=3.0, refine_step_m=0.5)
    single = align_to_reflectance(rgb, CAM, points, reflectance, start, line_best)
    assert single.ok and np.linalg.norm(single.T_map_cam[:3, 3]) > 0.5
    spread = align_to_reflectance(rgb, CAM, points, reflectance, start, replace(line_best, refine_spread_m=1.0))
    assert spread.ok and np.linalg.norm(spread.T_map_cam[:3, 3]) < 0.15
    r_err = np.degrees(np.linalg.norm(matrix_to_rotvec(spread.T_map_cam[:3, :3])))
    assert r_err < 0.5 and spread.evaluations > 2 * single.evaluations  # several ascents ran
    # a spread wider than the line leaves one ascent, from the line's best: the single round's pose
    wide = align_to_reflectance(rgb, CAM, points, reflectance, start, replace(line_best, refine_spread_m=7.0))
    assert np.linalg.norm(wide.T_map_cam[:3, 3] - single.T_map_cam[:3, 3]) < 0.3


def test_alignment_config_refuses_bad_values():
    for bad in (
        {"forward_step_m": 0.0},
        {"bins": 1},
        {"bins": 300},
        {"min_view_ratio": 1.5},
        {"forward_range_m": -1.0},
        {"refine_rounds": -1},
        {"refine_step_m": 0.0},
        {"pivot_depths_m": [10.0, -1.0]},
        {"pivot_depths_m": [float("nan")]},
        {"contrast_environments": ["hall"]},
        {"contrast_neighbours": 1},
        {"contrast_blur_px": 0.0},
        {"contrast_forward_range_m": -1.0},
        {"contrast_tracking_forward_range_m": -0.5},
        {"refine_spread_m": -1.0},
        {"tracking_refine_spread_m": -0.5},
        {"refine_spread_coarse": 0.5},
        {"hypothesis_coarse": 0.5},
        {"hypothesis_points": 100},
        {"support_weight": -0.1},
        {"support_radius_px": 0.0},
        {"likelihood_weight": -0.1},
        {"likelihood_weight": float("nan")},
        {"likelihood_points": 0},
        {"hypothesis_views": -1},
        {"hypothesis_margin": -0.1},
        {"hypothesis_margin": float("nan")},
        {"hypotheses_below_support": 1.5},
        {"contrast_hypotheses_below_support": -0.1},
        {"threads": 0},
        {"threads": 1.5},
        {"threads": True},
        {"hypothesis_finish": 0},
        {"points_weight": -0.1},
        {"contrast_points_weight": float("nan")},
        {"hypothesis_finish": 2.0},
        {"agreement_weight": -0.1},
        {"hypothesis_keep_views": -1},
        {"agreement_radius_m": 0.0},
        {"agreement_deg": float("nan")},
        {"turned_below_confidence": 1.5},
        {"turned_below_confidence": float("nan")},
        {"turned_views": -1},
        {"likelihood_starts": -1},
        {"contrast_likelihood_starts": -2},
        {"likelihood_views": -1},
        {"likelihood_along_m": -1.0},
        {"likelihood_lateral_m": float("nan")},
        {"likelihood_turn_deg": -10.0},
        {"manhattan_views": -1},
        {"manhattan_max_turn_deg": float("nan")},
        {"manhattan_starts_m": [0.0, -1.0]},
        {"contrast_manhattan_starts_m": [float("inf")]},
        {"rescue_support_weight": -0.1},
        {"rescue_agreement_weight": float("nan")},
        {"contrast_rescue_agreement_weight": -0.1},
        {"manhattan_grid_m": -1.0},
        {"contrast_manhattan_grid_m": float("nan")},
        {"manhattan_grid_step_m": 0.0},
        {"manhattan_grid_starts": -1},
    ):
        with pytest.raises(ValueError, match="alignment"):
            AlignmentConfig(**bad)
    assert AlignmentConfig(pivot_depths_m=[5, 20]).pivot_depths_m == (5.0, 20.0)  # a YAML list becomes a tuple


def test_each_pivot_turns_the_camera_about_the_point_at_its_depth():
    """A pivot move at depth D keeps the point D m ahead on the optical axis in place (to first order: the
    principal point moves by under a hundredth of a pixel), while the pure turn of the same size moves it."""
    step = np.radians(0.4)
    dirs = _ascent_directions(0.2, step, (10.0, 30.0))
    assert len(dirs) == 10
    for k, depth in ((6, 10.0), (7, 10.0), (8, 30.0), (9, 30.0)):
        for sign in (1.0, -1.0):
            T = _moved(np.eye(4), sign * dirs[k])
            p = np.linalg.inv(T) @ np.r_[0.0, 0.0, depth, 1.0]  # the point, seen from the moved camera
            assert np.hypot(p[0], p[1]) / p[2] * CAM.fx < 0.01
            turn = _moved(np.eye(4), sign * dirs[4 if k % 2 == 0 else 3])
            q = np.linalg.inv(turn) @ np.r_[0.0, 0.0, depth, 1.0]
            assert np.hypot(q[0], q[1]) / q[2] * CAM.fx > 1.0


@pytest.mark.parametrize("offset", [[-0.8, 0.0, 0.0, 0.0, 3.0, 0.0], [0.8, 0.0, 1.0, 0.0, -3.0, 0.0]])
def test_pivots_bring_back_a_pose_off_sideways_and_turned_the_same_way(street, offset):
    """Off 0.8 m sideways and turned 3 deg back toward the scene (points about 15 m ahead stay in place, as after
    a PnP that fits them): the six axes alone stall in that valley, the pivots walk along it."""
    points, reflectance, rgb = street
    start = _off(np.array(offset))
    ends = {}
    for pivots in ((), (10.0, 30.0)):
        res = align_to_reflectance(rgb, CAM, points, reflectance, start, AlignmentConfig(pivot_depths_m=pivots))
        t_err = np.linalg.norm(res.T_map_cam[:3, 3])
        r_err = np.degrees(np.linalg.norm(matrix_to_rotvec(res.T_map_cam[:3, :3])))
        ends[pivots] = (t_err, r_err)
    t_err, r_err = ends[(10.0, 30.0)]
    assert t_err < 0.1 and r_err < 0.3, ends
    assert ends[()][0] > 2 * t_err and ends[()][1] > r_err, ends


def test_alignment_searches_only_the_forward_range_it_is_given(street):
    """With no forward search the coordinate ascent alone cannot walk 4 m: the first search is what finds it."""
    points, reflectance, rgb = street
    start = _off(np.array([0.0, 0.0, 4.0, 0.0, 0.0, 0.0]))
    res = align_to_reflectance(rgb, CAM, points, reflectance, start, AlignmentConfig(forward_range_m=0.0))
    assert np.linalg.norm(res.T_map_cam[:3, 3]) > 1.0


@pytest.mark.parametrize("dist", [None, (-0.2, 0.05, 0.001, -0.002, 0.0)])
def test_the_compiled_score_is_the_mi_of_where_the_camera_projects_each_point(dist):
    """The scorer (numba kernels: projection, out-of-view bin, histogram, MI from counts) against numpy and the
    camera's own projection, for a rectified camera and a distorted one, over points in and out of view."""
    rng = np.random.default_rng(3)
    cam = PinholeCamera(CAM.width, CAM.height, CAM.K, None if dist is None else np.array(dist))
    grey = rng.random((CAM.height, CAM.width)).astype(np.float32)
    cfg = AlignmentConfig(bins=8, min_points=10)
    origin = np.array([100.0, -20.0, 3.0])  # the scorer works relative to a point near the camera
    scorer = _Scorer(prepare_alignment_image(grey, cam, replace(cfg, image_scale=1.0, blur_px=0.0)), origin, cfg)
    pts = origin + np.c_[rng.uniform(-30, 30, 4000), rng.uniform(-10, 10, 4000), rng.uniform(-5, 40, 4000)]
    T = make_T(rotvec_to_matrix(np.radians([2.0, -3.0, 1.0])), origin + np.array([0.3, -0.2, 0.5]))
    fine_cam = scorer.camera  # the grey bins live on the twice-upsampled image
    pr = fine_cam.project((np.linalg.inv(T) @ np.c_[pts, np.ones(len(pts))].T)[:3].T)
    col, row = pr.pixel_index().T
    ok = pr.in_image & (col >= 0) & (col < fine_cam.width) & (row >= 0) & (row < fine_cam.height)
    grey_bins = scorer.bins[row[ok] * fine_cam.width + col[ok]]
    # reflectance that is the grey bin of the pixel each point falls in, for half the points in view: a scorer
    # that looks up the wrong pixels (half a pixel off) scores them as noise
    refl_bins = rng.integers(0, cfg.bins, len(pts))
    refl_bins[np.flatnonzero(ok)[::2]] = grey_bins[::2]
    mi, n = scorer.score(T, np.ascontiguousarray((pts - origin).T.astype(np.float32)), scorer.rows(refl_bins))

    assert 1000 < ok.sum() < len(pts) - 500  # both kinds of points are there
    assert abs(n - ok.sum()) <= 2  # float32 against float64 may differ for a point on a pixel's edge
    expected = mutual_information(refl_bins[ok], grey_bins, cfg.bins)
    assert expected > 0.3
    assert mi == pytest.approx(expected, abs=2e-3)
    assert scorer.score(T, np.zeros((3, 5), np.float32), scorer.rows(refl_bins[:5]))[0] == -np.inf  # < min_points


@pytest.mark.parametrize("n", [0, 1, 7, 4096, 4099])
def test_the_joint_histogram_counts_the_points_in_view_in_any_order_and_layout(n):
    """The compiled histogram (four partial histograms, out-of-view points skipped) counts each point in view once
    in its (reflectance, grey) cell, whatever runs of equal cells the points come in and however many they are; the
    scorer gives the same score to points in rows (what an ascent's view holds) and interleaved."""
    rng = np.random.default_rng(n)
    bins, n_cells = 6, 50
    grey_bins = np.append(rng.integers(0, bins, n_cells), bins).astype(np.uint16)  # + the out-of-view cell
    cells = np.repeat(rng.integers(0, n_cells + 1, n), rng.integers(1, 9, n))[:n].astype(np.int32)  # runs
    refl = rng.integers(0, bins, n)
    joint = np.full(bins * (bins + 1), -1, np.int64)
    _cells_joint(cells, (refl * (bins + 1)).astype(np.int32), grey_bins, joint)
    in_view = cells < n_cells
    expected = np.bincount(refl[in_view] * (bins + 1) + grey_bins[cells[in_view]], minlength=bins * (bins + 1))
    np.testing.assert_array_equal(joint.reshape(bins, bins + 1)[:, :bins], expected.reshape(bins, bins + 1)[:, :bins])
    assert joint.reshape(bins, bins + 1)[:, bins].sum() == 0  # the out-of-view column is not counted

    cfg = AlignmentConfig(bins=8, min_points=10)
    grey = rng.random((CAM.height, CAM.width)).astype(np.float32)
    scorer = _Scorer(prepare_alignment_image(grey, CAM, cfg), np.zeros(3), cfg)
    local = np.c_[rng.uniform(-20, 20, 3000), rng.uniform(-5, 5, 3000), rng.uniform(1, 40, 3000)].astype(np.float32)
    rows = scorer.rows(rng.integers(0, cfg.bins, len(local)))
    search = _Search(scorer, np.ascontiguousarray(local.T), rows, CAM, IPRConfig(), np.zeros(3), cfg)
    seen = rng.random(len(local)) < 0.7
    pts_t, view_rows = _view(search.local_t, search.rows, seen)
    assert pts_t.flags.c_contiguous  # each coordinate's row contiguous: the kernel vectorises over them
    T = make_T(rotvec_to_matrix(np.radians([1.0, -2.0, 0.5])), np.array([0.2, 0.1, -0.3]))
    score = scorer.score(T, pts_t, view_rows)
    assert np.isfinite(score[0]) and score == scorer.score(T, np.asfortranarray(pts_t), view_rows)
    assert score == scorer.score(T, search.local_t, rows, seen)  # the points selected, or all with a mask


def _street_all_around(street, cx: float) -> tuple[np.ndarray, np.ndarray, AlignmentConfig, object]:
    """The street's map with points behind the camera and far to its sides too, a camera with principal point
    column ``cx`` (outside the image when past its width), every point kept, and the street's image for it."""
    points, reflectance, rgb = street
    points = np.concatenate([points, points * [1, 1, -1], points[::7] * [3, 1, 0.3]])
    reflectance = np.concatenate([reflectance, reflectance, reflectance[::7]])
    cam = PinholeCamera.from_params(CAM.width, CAM.height, CAM.fx, CAM.fy, cx, CAM.cy)
    cfg = AlignmentConfig(max_points=10**6)
    return points, reflectance, cfg, prepare_alignment_image(rgb, cam, cfg)


@pytest.mark.parametrize("cx", [239.5, 600.0])
def test_a_line_of_candidates_sees_and_scores_as_over_all_points(street, cx):
    """A line along the optical axis works on the points its rearmost candidate may see: the masks, scores and views
    are the same as over every point of the map (here also points behind the camera and beside it). A camera whose
    principal point is outside its image keeps them all."""
    points, reflectance, cfg, image = _street_all_around(street, cx)
    start = _off(np.array([0.3, -0.1, 0.4, 0.5, -0.8, 0.2]))
    scorer = _Scorer(image, start[:3, 3], cfg)
    prepared = prepare_alignment_points(points, reflectance, cfg)
    rows = scorer.rows(prepared.reflectance_bins)
    search = _Search.around(scorer, prepared.points, rows, image.camera, IPRConfig(), start[:3, 3], cfg)
    local = (prepared.points - start[:3, 3]).astype(np.float32)
    assert search.local_t.flags.c_contiguous and np.array_equal(search.local_t, local.T)  # (bit for bit)

    class _AllPoints(_Search):
        def _line_points(self, rear):
            return self.local_t, self.rows

    every = _AllPoints(scorer, search.local_t, rows, image.camera, IPRConfig(), start[:3, 3], cfg)
    line, full = search.line(start, 6.0, 0.5), every.line(start, 6.0, 0.5)
    kept = line.points[0].shape[1]
    assert kept < 0.6 * len(local) if cx < CAM.width else kept == len(local)
    np.testing.assert_array_equal(line.scores, full.scores)
    np.testing.assert_array_equal(line.n_seen, full.n_seen)
    np.testing.assert_array_equal(line.seen.sum(1), full.seen.sum(1))
    assert np.isfinite(line.scores).sum() > 10
    for k in range(len(line.poses)):
        for a, b in zip(line.view(k), full.view(k), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cx", [239.5, 600.0])
def test_a_grid_at_one_heading_sees_and_scores_as_over_all_points(street, cx, monkeypatch):
    """``scores_at`` scores each heading of a grid (poses that share a rotation, moved along and across their axis)
    on the points one of its poses may see: the scores and counts are those over every point of the map (here also
    points behind the camera and beside it), bit for bit, for a fraction of the points. A camera whose principal
    point is outside its image, or poses that do not share a rotation, keep them all."""
    points, reflectance, cfg, image = _street_all_around(street, cx)
    prepared = prepare_alignment_points(points, reflectance, cfg)
    offsets = np.arange(-4, 5) * 0.5
    along, across = (g.ravel() for g in np.meshgrid(offsets, offsets, indexing="ij"))
    headings = [_off(np.array([0.3, -0.1, 0.4, 0.5, yaw, 0.2])) for yaw in (-0.8, 30.0)]
    poses = np.concatenate([moved_in_view(T, along, across) for T in headings])
    kept: list[int] = []
    box_points = _Search.box_points

    def counted(self, views):
        found = box_points(self, views)
        kept.append(found[0].shape[1])
        return found

    monkeypatch.setattr(_Search, "box_points", counted)
    scores, counts = scores_at(image, prepared, poses, cfg, IPRConfig())
    monkeypatch.setattr(_Search, "box_points", lambda self, views: (self.local_t, self.rows))
    full_scores, full_counts = scores_at(image, prepared, poses, cfg, IPRConfig())
    np.testing.assert_array_equal(scores, full_scores)
    np.testing.assert_array_equal(counts, full_counts)
    assert np.isfinite(scores).sum() > 100 and len(kept) == 2  # (one call a heading)
    assert all(k < 0.6 * len(points) for k in kept) if cx < CAM.width else kept == [len(points)] * 2
    scorer = _Scorer(image, poses[:, :3, 3].mean(0), cfg)
    rows = scorer.rows(prepared.reflectance_bins)
    search = _Search.around(scorer, prepared.points, rows, image.camera, IPRConfig(), poses[:, :3, 3].mean(0), cfg)
    assert box_points(search, search.views(poses))[0].shape[1] == len(points)  # two rotations: every point


def _surface(p: np.ndarray) -> np.ndarray:
    """The corridor's surfaces: 0 the floor (1.6 m below), 1 the walls."""
    return np.where(p[..., 1] > 1.55, 0, 1)


@pytest.fixture(scope="module")
def corridor():
    """The street's geometry as a corridor: floor and walls each one grey (and one reflectivity) with detail
    (0.5 m cells), lit by lamps near the camera (the grey level falls with distance; the LiDAR's reflectance does
    not). The map as :func:`street`'s, the reflectance also as its local contrast (8 neighbours)."""
    rng = np.random.default_rng(1)
    g = np.arange(0.05, 40.0, 0.1)
    floor = np.stack(np.meshgrid(np.arange(-5, 5, 0.1), [1.6], g), -1).reshape(-1, 3)
    side = np.stack(np.meshgrid([5.0], np.arange(-4, 1.6, 0.1), g), -1).reshape(-1, 3)
    points = np.concatenate([floor, side, side * [-1, 1, 1]]) + rng.normal(0, 0.01, (1, 3))
    level = np.array([0.3, 0.6])
    reflectance = level[_surface(points)] * (0.5 + 0.5 * _paint(points))
    v, u = np.mgrid[0 : CAM.height, 0 : CAM.width]
    hits = _corridor_hits(np.stack([(u - CAM.cx) / CAM.fx, (v - CAM.cy) / CAM.fy, np.ones(u.shape)], -1))
    light = 0.15 + 0.85 / (1.0 + (hits[..., 2] / 6.0) ** 2)
    grey = 255 * light * level[_surface(hits)] * (0.5 + 0.5 * _paint(hits)) + rng.normal(0, 2, u.shape)
    rgb = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return points, reflectance, reflectance_contrast(points, reflectance, 8), rgb


@pytest.mark.parametrize("ahead", [0.0, 3.0, -3.0])
def test_indoors_local_contrast_holds_the_pose_where_levels_slide_along_the_corridor(corridor, ahead):
    """Levels: floor against walls fits from anywhere along the corridor, and the lamps' fall-off bends the grey
    levels, so the search leaves even the true pose by metres. Local contrast (the grey level less its blur, the
    reflectance less its neighbours') sees only the detail, which fits from the true pose alone."""
    points, reflectance, contrast, rgb = corridor
    start = _off(np.array([0.0, 0.0, ahead, 0.0, 0.0, 0.0]))
    levels = align_to_reflectance(rgb, CAM, points, reflectance, start, AlignmentConfig())
    assert levels.ok and np.linalg.norm(levels.T_map_cam[:3, 3]) > 1.0
    local = align_to_reflectance(rgb, CAM, points, contrast, start, AlignmentConfig(), local_contrast=True)
    assert local.ok and np.linalg.norm(local.T_map_cam[:3, 3]) < 0.25, local.T_map_cam[:3, 3]


def test_reflectance_contrast_is_each_points_reflectance_less_its_neighbours_mean():
    rng = np.random.default_rng(5)
    grid = np.stack(np.meshgrid(np.arange(40) * 0.1, np.arange(40) * 0.1, [0.0]), -1).reshape(-1, 3)
    flat = reflectance_contrast(grid, np.full(len(grid), 0.4), 8)
    np.testing.assert_allclose(flat, 0.0, atol=1e-12)  # one level everywhere: no contrast
    step = np.where(grid[:, 0] < 2.0, 0.2, 0.8)  # two levels: contrast only along the edge, of opposite signs
    c = reflectance_contrast(grid, step, 8)
    far = np.abs(grid[:, 0] - 1.95) > 0.3
    np.testing.assert_allclose(c[far], 0.0, atol=1e-12)
    assert c[np.isclose(grid[:, 0], 1.9)].max() < -0.05 and c[np.isclose(grid[:, 0], 2.0)].min() > 0.05
    noisy = step + rng.normal(0, 0.05, len(grid))  # the neighbours' mean, computed directly
    i = 777
    nearest = np.argsort(np.linalg.norm(grid - grid[i], axis=1), kind="stable")[:8]
    d = np.sort(np.linalg.norm(grid - grid[i], axis=1))
    assert d[7] < d[8]  # (no tie at the 8th neighbour for this point)
    assert reflectance_contrast(grid, noisy, 8)[i] == pytest.approx(noisy[i] - noisy[nearest].mean())
    bad = grid.copy()
    bad[3] = np.nan  # a non-finite point gets NaN (the alignment drops it) and is nobody's neighbour
    c_bad = reflectance_contrast(bad, step, 8)
    assert np.isnan(c_bad[3]) and np.isfinite(np.delete(c_bad, 3)).all()
    assert reflectance_contrast(grid[:1], step[:1], 8) == pytest.approx([0.0])


def test_each_frame_gets_its_environments_search():
    cfg = AlignmentConfig(
        forward_range_m=6.0,
        tracking_forward_range_m=5.0,
        refine_rounds=2,
        tracking_refine_rounds=1,
        refine_spread_m=0.6,
    )
    assert cfg.for_frame("outdoor", tracking=False) == (cfg, False)
    tracked, contrast = cfg.for_frame("unknown", tracking=True)
    assert (tracked.forward_range_m, tracked.refine_rounds, tracked.refine_spread_m, contrast) == (5.0, 1, 0.0, False)
    indoor, contrast = cfg.for_frame("indoor", tracking=False)  # the contrast environments' shorter search
    assert (indoor.forward_range_m, indoor.refine_rounds, contrast) == (3.0, 2, True)
    indoor_tracked = cfg.for_frame("indoor", tracking=True)[0]
    assert (indoor_tracked.forward_range_m, indoor_tracked.refine_rounds) == (1.5, 1)
    assert indoor_tracked.tracking_from_prior and not tracked.tracking_from_prior  # from the prior too, indoors
    short = replace(cfg, tracking_forward_range_m=1.0)
    assert short.for_frame("indoor", tracking=True)[0].forward_range_m == 1.0  # the shorter of the two
    levels = replace(cfg, contrast_environments=[])
    assert levels.for_frame("indoor", tracking=False) == (levels, False)


def test_more_starts_keep_the_best_scoring_search(street):
    """A start out of a short search's reach and one within it: the result is the one that found the true pose,
    the same pose and score as searching from that start alone."""
    points, reflectance, rgb = street
    short = AlignmentConfig(forward_range_m=1.0, refine_rounds=0)
    far, near = _off(np.array([0.0, 0.0, 4.0, 0.0, 0.0, 0.0])), _off(np.array([0.0, 0.0, 0.8, 0.0, 0.0, 0.0]))
    alone = [align_to_reflectance(rgb, CAM, points, reflectance, T, short) for T in (far, near)]
    assert np.linalg.norm(alone[0].T_map_cam[:3, 3]) > 1.0 and np.linalg.norm(alone[1].T_map_cam[:3, 3]) < 0.25
    both = align_to_reflectance(rgb, CAM, points, reflectance, far, short, more_starts=[near])
    np.testing.assert_array_equal(both.T_map_cam, alone[1].T_map_cam)
    assert both.score == alone[1].score and both.evaluations == alone[1].evaluations
    first = align_to_reflectance(rgb, CAM, points, reflectance, near, short, more_starts=[far])
    np.testing.assert_array_equal(first.T_map_cam, alone[1].T_map_cam)


def test_an_image_prepared_once_aligns_as_the_image_itself_and_refuses_other_settings(street):
    """Several alignments of one frame share one prepared image (the hypotheses of a single image): the same
    poses, scores and evaluations as preparing it each time; prepared for another camera, another blur or the
    local contrast, it is refused rather than scored against the wrong bins."""
    points, reflectance, rgb = street
    cfg = AlignmentConfig(forward_range_m=2.0)
    image = prepare_alignment_image(rgb, CAM, cfg)
    for offset in ([0.0, 0.0, 1.5, 0.0, 0.0, 0.0], [0.2, -0.1, -1.0, 0.3, 0.5, 0.0]):
        start = _off(np.array(offset))
        own = align_to_reflectance(rgb, CAM, points, reflectance, start, cfg)
        shared = align_to_reflectance(rgb, CAM, points, reflectance, start, cfg, image=image)
        assert own.ok and np.linalg.norm(own.T_map_cam[:3, 3]) < 0.25
        np.testing.assert_array_equal(shared.T_map_cam, own.T_map_cam)
        assert (shared.score, shared.evaluations) == (own.score, own.evaluations)
    assert not image.bins.flags.writeable  # shared by every scorer of the frame
    other_cam = PinholeCamera.from_params(480, 180, 250.0, 250.0, 239.5, 89.5)
    for kwargs in (
        {"camera": other_cam},
        {"config": replace(cfg, blur_px=2.0)},
        {"config": replace(cfg, bins=8)},
        {"local_contrast": True},
    ):
        call = {"camera": CAM, "config": cfg, "local_contrast": False, **kwargs}
        with pytest.raises(ValueError, match="prepared image"):
            align_to_reflectance(
                rgb,
                call["camera"],
                points,
                reflectance,
                np.eye(4),
                call["config"],
                None,
                call["local_contrast"],
                image=image,
            )


@pytest.mark.parametrize("coarse,gravity", [(False, False), (True, False), (False, True)])
def test_the_compiled_ascent_makes_the_python_sweeps_pose_for_pose(street, coarse, gravity):
    """The coordinate ascent in one compiled call (:func:`_ascent_kernel`) against its Python sweeps (kept for
    cameras with distortion), from poses off in every parameter: the same end pose bit for bit, the same score and
    points, and as many poses scored, with a tilt prior too. Its moves halve level by level as the ascent's steps
    do."""
    points, reflectance, rgb = street
    cfg = AlignmentConfig()
    prior = GravityPrior(down_in_camera(_off(np.array([0, 0, 0, 0.3, 0, 0.2]))), np.radians(0.1)) if gravity else None
    image = prepare_alignment_image(rgb, CAM, cfg, gravity=prior)
    prepared = prepare_alignment_points(points, reflectance, cfg)
    levels = _ascent_move_levels(cfg.step_m, cfg.step_deg, cfg.pivot_depths_m, cfg.min_step_m, cfg.min_step_deg)
    assert levels.shape == (3, 10, 2, 4, 4) and not levels.flags.writeable  # 0.2, 0.1, 0.05 m; 0.4, 0.2, 0.1 deg
    np.testing.assert_allclose(levels[1, 2, 1][:3, 3], [0.0, 0.0, -0.1], atol=1e-12)  # z, half the step, back
    for offset in ([0.3, -0.1, 0.4, 0.5, -0.8, 0.2], [-0.5, 0.2, -0.3, -0.6, 1.0, -0.3]):
        start = _off(np.array(offset))
        scorer = _Scorer(image, start[:3, 3], cfg)
        rows = scorer.rows(prepared.reflectance_bins)
        search = _Search.around(scorer, prepared.points, rows, image.camera, IPRConfig(), start[:3, 3], cfg)
        view = _view(search.local_t, search.rows, np.ones(len(rows), bool))
        score, n = scorer.score(start, *view)
        compiled = search.ascend(start, score, n, view, coarse=coarse)
        evaluations, scorer.evaluations = scorer.evaluations, 0
        stop = cfg.refine_spread_coarse if coarse else 1.0
        moves = _ascent_move_levels(
            cfg.step_m, cfg.step_deg, cfg.pivot_depths_m, stop * cfg.min_step_m, stop * cfg.min_step_deg
        )
        python = search.ascend_python(start, score, n, view, moves)
        np.testing.assert_array_equal(compiled[0], python[0])
        assert compiled[1:] == python[1:] and evaluations == scorer.evaluations + 1  # (+ the start's score)
        if prior is not None:  # the score is the MI less the prior's penalty
            assert scorer.tilt_weight > 0 and compiled[1] < scorer.score(compiled[0], *view)[0]
        assert compiled[1] > score and np.linalg.norm(compiled[0][:3, 3]) < np.linalg.norm(offset[:3])


def test_points_prepared_once_align_as_the_points_themselves_and_refuse_other_settings(street):
    """A submap aligned on several times (a frame's hypotheses, frame after frame) is thinned and binned once: the
    same poses, scores and evaluations as preparing it each time, non-finite points dropped, and points prepared
    with another thinning or binning refused."""
    points, reflectance, rgb = street
    cfg = AlignmentConfig(forward_range_m=2.0, max_points=20000)
    dirty = points.copy()
    dirty[::97] = np.nan
    prepared = prepare_alignment_points(dirty, reflectance, cfg)
    assert len(prepared.points) == 20000 and np.isfinite(prepared.points).all()
    assert not prepared.points.flags.writeable and prepared.reflectance_bins.max() == cfg.bins - 1
    start = _off(np.array([0.1, 0.0, 1.2, 0.0, 0.3, 0.0]))
    own = align_to_reflectance(rgb, CAM, dirty, reflectance, start, cfg)
    shared = align_to_reflectance(rgb, CAM, None, None, start, cfg, prepared=prepared)
    assert own.ok and np.linalg.norm(own.T_map_cam[:3, 3]) < 0.25
    np.testing.assert_array_equal(shared.T_map_cam, own.T_map_cam)
    assert (shared.score, shared.evaluations) == (own.score, own.evaluations)
    for other in (replace(cfg, max_points=10000), replace(cfg, bins=8)):
        with pytest.raises(ValueError, match="prepared points"):
            align_to_reflectance(rgb, CAM, None, None, start, other, prepared=prepared)
    with pytest.raises(ValueError, match="points and their reflectance"):
        align_to_reflectance(rgb, CAM, None, None, start, cfg)
    few = prepare_alignment_points(points[:100], reflectance[:100], cfg)
    res = align_to_reflectance(rgb, CAM, None, None, start, cfg, prepared=few)
    assert not res.ok and "100 map points" in res.message


def test_part_scores_are_the_scores_over_parts_of_what_the_pose_sees_and_tell_places_along_the_axis_apart(street):
    """``part_scores``: the MI over the points a pose sees (IPR) less than each depth of ``near_m`` ahead, then over
    those left and right of its optical axis, each the same as scoring those points alone; -inf where they are too
    few. With ``parts_per_entropy`` (the default) each is that MI over the entropy of its points' reflectance bins,
    times log(bins). On the street, a pose 2 m along the axis loses several times more of the near score than of the
    score over every point it sees (the far facades fit from both)."""
    points, reflectance, rgb = street
    cfg = AlignmentConfig(max_points=10**6)
    assert cfg.parts_per_entropy
    image = prepare_alignment_image(rgb, CAM, cfg)
    prepared = prepare_alignment_points(points, reflectance, cfg)

    def reference(T: np.ndarray, part) -> tuple[float, float]:  # the points picked apart, scored alone: MI, entropy
        in_cam = transform_points(invert(T), prepared.points)
        keep = visible_mask(prepared.points, invert(T), image.camera, IPRConfig()) & part(in_cam[:, 0], in_cam[:, 2])
        scorer = _Scorer(image, T[:3, 3], cfg)
        local_t = np.ascontiguousarray((prepared.points[keep] - T[:3, 3]).astype(np.float32).T)
        mi, n = scorer.score(T, local_t, scorer.rows(prepared.reflectance_bins[keep]))
        assert n == keep.sum() or mi == -np.inf  # (every point picked is in the image)
        p = np.bincount(prepared.reflectance_bins[keep], minlength=cfg.bins) / max(keep.sum(), 1)
        return mi, float(-(p[p > 0] * np.log(p[p > 0])).sum())

    depths = (1.0, 10.0, 20.0, 1e3)
    parts = [lambda x, z, d=d: z < d for d in depths] + [lambda x, z: x < 0, lambda x, z: x >= 0]
    scores = {}
    for ahead in (0.0, 2.0):
        T = _off(np.array([0.05, -0.02, ahead, 0.2, -0.3, 0.1]))
        got = part_scores(image, prepared, T, cfg, IPRConfig(), depths)
        raw = part_scores(image, prepared, T, replace(cfg, parts_per_entropy=False), IPRConfig(), depths)
        assert got.shape == raw.shape == (6,) and got[0] == raw[0] == -np.inf  # the road comes into view 4 m ahead
        for k in range(1, 6):
            mi, entropy = reference(T, parts[k])
            assert 1.0 < entropy < np.log(cfg.bins), k
            assert raw[k] == pytest.approx(mi, abs=1e-12), k
            assert got[k] == pytest.approx(mi * np.log(cfg.bins) / entropy, abs=1e-12), k
        assert len(set(got[1:])) == 5  # (each part its own points)
        scores[ahead] = got
    near_drop, full_drop = scores[0][1] - scores[2][1], scores[0][3] - scores[2][3]
    assert near_drop > 3 * full_drop > 0, scores
    with pytest.raises(ValueError, match="prepared points"):
        part_scores(image, prepared, T, replace(cfg, bins=8), IPRConfig(), (10.0,))


def test_scores_at_are_each_poses_mi_on_what_it_sees_less_the_chance_level_and_peak_at_the_camera(street):
    """``scores_at``: each pose's MI over the points it sees (IPR, scored alone) less ``chance_mi`` for that many
    points; -inf where it sees fewer than ``min_points``. On a grid of poses 0.5 m apart along and across the street,
    the true camera scores best, and a pose facing the facade from 0.3 m (a few hundred points, which fit by chance)
    is far below it once the chance level is taken off."""
    points, reflectance, rgb = street
    cfg = AlignmentConfig(max_points=10**6)
    image = prepare_alignment_image(rgb, CAM, cfg)
    prepared = prepare_alignment_points(points, reflectance, cfg)
    assert chance_mi(16, 300) == pytest.approx(0.375) and chance_mi(16, np.array([20000]))[0] == pytest.approx(0.005625)
    offsets = np.arange(-2, 3) * 0.5
    grid = [_off(np.array([x, 0.0, z, 0.0, 0.0, 0.0])) for x in offsets for z in offsets]
    wall = _off(np.array([4.7, 0.0, 5.0, 0.0, 90.0, 0.0]))  # facing the right facade from 0.3 m
    poses = np.array([*grid, wall])
    scores, counts = scores_at(image, prepared, poses, cfg, IPRConfig())
    assert scores.shape == counts.shape == (len(poses),)
    for k, T in enumerate(poses):
        keep = visible_mask(prepared.points, invert(T), image.camera, IPRConfig())
        scorer = _Scorer(image, T[:3, 3], cfg)
        local_t = np.ascontiguousarray((prepared.points[keep] - T[:3, 3]).astype(np.float32).T)
        mi, n = scorer.score(T, local_t, scorer.rows(prepared.reflectance_bins[keep]))
        assert counts[k] == n == keep.sum(), k
        assert scores[k] == pytest.approx(mi - chance_mi(cfg.bins, n), abs=1e-9), k
    assert int(np.argmax(scores[:-1])) == len(grid) // 2  # the true camera (offsets 0, 0)
    assert counts[-1] < 0.1 * counts[len(grid) // 2] and scores[-1] < scores[len(grid) // 2] - 0.5
    more = replace(cfg, min_points=int(counts.max()) + 1, hypothesis_points=10**6)
    few = scores_at(image, prepared, poses, more, IPRConfig())[0]
    assert np.all(few == -np.inf)
    assert scores_at(image, prepared, np.zeros((0, 4, 4)), cfg, IPRConfig())[0].shape == (0,)


def test_near_m_takes_one_depth_or_several_and_refuses_others():
    """``alignment.near_m``: a list from YAML or ROS parameters becomes a tuple, one number a tuple of one; no
    depth, a negative one or NaN is refused with the parameter's name."""
    assert AlignmentConfig(near_m=[10, 20.5]).near_m == (10.0, 20.5)
    assert AlignmentConfig(near_m=12).near_m == (12.0,)
    for bad in ([], [10.0, -1.0], [float("nan")]):
        with pytest.raises(ValueError, match=r"alignment\.near_m"):
            AlignmentConfig(near_m=bad)


def test_turned_starts_take_angles_as_a_list_and_are_off_on_the_contrast_environments():
    """``alignment.turned_starts_deg``: a list from YAML or ROS parameters becomes a tuple (one number a tuple of
    one); an angle not in (0, 180) deg is refused with the parameter's name. Indoors (a contrast environment) a frame
    takes ``contrast_turned_starts_deg``, empty by default: nothing gained there; and ``contrast_likelihood_starts``,
    0 by default (one frame of 320 gained)."""
    assert AlignmentConfig(turned_starts_deg=[10, 20.5]).turned_starts_deg == (10.0, 20.5)
    assert AlignmentConfig(contrast_turned_starts_deg=15).contrast_turned_starts_deg == (15.0,)
    for bad in ([10.0, 0.0], [-5.0], [180.0], [float("nan")]):
        for name in ("turned_starts_deg", "contrast_turned_starts_deg"):
            with pytest.raises(ValueError, match=rf"alignment\.{name}"):
                AlignmentConfig(**{name: bad})
    cfg = AlignmentConfig()
    assert cfg.for_frame("outdoor", tracking=False)[0].turned_starts_deg == (10.0, 20.0)
    assert cfg.for_frame("indoor", tracking=False)[0].turned_starts_deg == ()
    assert AlignmentConfig(contrast_turned_starts_deg=[15]).for_frame("indoor", False)[0].turned_starts_deg == (15.0,)
    # the starts the patch likelihood finds: outdoors two, indoors none unless asked
    assert cfg.for_frame("outdoor", tracking=False)[0].likelihood_starts == 2
    assert cfg.for_frame("indoor", tracking=False)[0].likelihood_starts == 0
    assert AlignmentConfig(contrast_likelihood_starts=3).for_frame("indoor", False)[0].likelihood_starts == 3
    # the Manhattan starts: indoors four moves along each turned viewpoint, outdoors the turned viewpoint in place
    assert cfg.for_frame("indoor", tracking=False)[0].manhattan_starts_m == (0.0, 1.0, 2.0, 3.0)
    assert cfg.for_frame("outdoor", tracking=False)[0].manhattan_starts_m == (0.0,)
    assert AlignmentConfig(manhattan_starts_m=[]).for_frame("outdoor", False)[0].manhattan_starts_m == ()
    assert AlignmentConfig(contrast_manhattan_starts_m=2).for_frame("indoor", False)[0].manhattan_starts_m == (2.0,)
    # ... and their grid, with the agreement weighed in the choice made again: indoors only unless asked
    indoor, outdoor = cfg.for_frame("indoor", tracking=False)[0], cfg.for_frame("outdoor", tracking=False)[0]
    assert (indoor.manhattan_grid_m, indoor.rescue_agreement_weight) == (2.0, 0.05)
    assert (outdoor.manhattan_grid_m, outdoor.rescue_agreement_weight) == (0.0, 0.0)
    assert AlignmentConfig(contrast_manhattan_grid_m=0).for_frame("indoor", False)[0].manhattan_grid_m == 0.0


def test_equal_count_bins_are_numpys_quantiles_to_the_bit():
    """The compiled radix select gives ``np.quantile``'s edges exactly (same values, same dtype) for grey levels,
    ties, signed zeros, huge values, tiny arrays and any bin count; NaN falls back to numpy's rules."""
    from ep2p_loc_ros.reflectance_alignment import _equal_count_bins

    rng = np.random.default_rng(3)
    cases = [
        (rng.random(116_560) * 255).astype(np.float32),  # a 620 x 188 grey image
        np.round(rng.random(5000) * 10).astype(np.float32),  # many ties
        np.r_[np.zeros(100, np.float32), -np.zeros(100, np.float32), np.ones(3, np.float32)],
        np.float32([1e38, -1e38, 0.0, 5.0] * 10),
        np.float32([2.0, -1.0]),
        np.float32([1.0, np.nan, 2.0, 3.0]),
    ]
    cases += [
        (rng.standard_normal(int(rng.integers(2, 3000))) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
        for _ in range(60)
    ]
    for i, values in enumerate(cases):
        for bins in (2, 3, 16, 37):
            got = _equal_count_bins(values, bins)
            want = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
            assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True), (i, bins)
