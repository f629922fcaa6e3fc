"""Invisible point removal: constructed scenes with known answers, and real KITTI scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.functional import max_pool2d

from ep2p_loc_ros.calib import read_kitti_object_calib, read_velodyne_bin
from ep2p_loc_ros.geometry import PinholeCamera, invert, make_T, rotvec_to_matrix, transform_points
from ep2p_loc_ros.ipr import IPRConfig, _min_max_filter, _window_filter, visible_mask, visible_mask_t

KITTI = Path(__file__).parent / "data" / "kitti_object"
CAM = PinholeCamera.from_params(320, 240, 300.0, 300.0, 159.5, 119.5)
# A camera somewhere in the map, not at the origin, so the transform is exercised too.
T_MAP_CAM = make_T(rotvec_to_matrix([0.1, -0.3, 0.05]), [12.0, -4.0, 1.5])
T_CAM_MAP = invert(T_MAP_CAM)


def _plane(z: float, x: tuple[float, float], y: tuple[float, float], step: float) -> np.ndarray:
    """Fronto-parallel grid of points at depth ``z`` (camera frame)."""
    xs, ys = np.arange(x[0], x[1] + step / 2, step), np.arange(y[0], y[1] + step / 2, step)
    X, Y = np.meshgrid(xs, ys)
    return np.stack([X.ravel(), Y.ravel(), np.full(X.size, z)], axis=1)


def _to_map(p_cam: np.ndarray) -> np.ndarray:
    return transform_points(T_MAP_CAM, p_cam)


def _pixels(p_cam: np.ndarray) -> np.ndarray:
    return CAM.project(p_cam).uv


def _on_border(uv: np.ndarray, cam: PinholeCamera) -> np.ndarray:
    """Points within float rounding of the image border, where in/out may legitimately differ."""
    d = np.abs(np.concatenate([uv + 0.5, uv - [cam.width - 0.5, cam.height - 0.5]], axis=1))
    return np.min(d, axis=1) < 1e-6


def _scene() -> np.ndarray:
    """Walls and a pole in the camera frame, for the batch / type / device checks."""
    rng = np.random.default_rng(0)
    pts = np.vstack([_plane(5.0, (-1, 1), (-1, 1), 0.03), _plane(10.0, (-4, 4), (-3, 3), 0.05)])
    return pts + rng.normal(0.0, 0.01, pts.shape)


# --------------------------------------------------------------------------- constructed scenes


def test_ipr_wall_in_front_of_wall() -> None:
    near = _plane(5.0, (-1.0, 1.0), (-1.0, 1.0), 0.0125)  # ~0.75 px spacing; silhouette u, v in [99.5, 219.5]
    far = _plane(10.0, (-4.0, 4.0), (-3.0, 3.0), 0.025)
    vis = visible_mask(_to_map(np.vstack([near, far])), T_CAM_MAP, CAM)
    assert vis.dtype == bool and vis.shape == (len(near) + len(far),)
    vis_near, vis_far = vis[: len(near)], vis[len(near) :]
    assert vis_near.all()

    uv = _pixels(far)
    lo, hi = np.array([99.5, 59.5]), np.array([219.5, 179.5])
    margin = 2 * IPRConfig().downsample + 1  # cell quantisation at the silhouette
    covered = np.all((uv > lo + margin) & (uv < hi - margin), axis=1)
    uncovered = np.any((uv < lo - margin) | (uv > hi + margin), axis=1) & CAM.project(far).in_image
    assert covered.sum() > 20_000 and uncovered.sum() > 40_000
    assert not vis_far[covered].any(), "far wall points behind the near wall must be hidden"
    assert vis_far[uncovered].all(), "far wall points beside the near wall must stay visible"


def test_ipr_thin_pole_in_front_of_facade() -> None:
    # Pole of radius 5 cm at 8 m: about 3.8 px wide in the image, i.e. thinner than the 5 x 5 window.
    ang, hgt = np.meshgrid(np.linspace(0, 2 * np.pi, 24, endpoint=False), np.arange(-1.5, 1.5, 0.02))
    pole = np.stack([0.05 * np.cos(ang.ravel()), hgt.ravel(), 8.0 + 0.05 * np.sin(ang.ravel())], axis=1)
    facade = _plane(20.0, (-8.0, 8.0), (-5.0, 5.0), 0.04)
    vis = visible_mask(_to_map(np.vstack([pole, facade])), T_CAM_MAP, CAM)
    assert vis[: len(pole)].all(), "the pole itself (both sides, 1 % depth spread) is visible"
    vis_facade = vis[len(pole) :]

    uv = _pixels(facade)
    pole_lo, pole_hi = _pixels(pole).min(axis=0), _pixels(pole).max(axis=0)  # pole's pixel bounding box
    m = 2 * IPRConfig().downsample + 1  # cell quantisation at the silhouette
    behind = (np.abs(uv[:, 0] - CAM.cx) < 1.0) & (uv[:, 1] > pole_lo[1] + m) & (uv[:, 1] < pole_hi[1] - m)
    beside = np.any((uv < pole_lo - m) | (uv > pole_hi + m), axis=1) & CAM.project(facade).in_image
    assert behind.sum() > 500
    assert not vis_facade[behind].any(), "facade points right behind the pole must be hidden"
    assert vis_facade[beside].all(), "the rest of the facade stays visible"


def test_ipr_sparse_occluder_is_seen_through_only_when_gaps_exceed_window() -> None:
    far = _plane(20.0, (-8.0, 8.0), (-6.0, 6.0), 0.05)
    cfg = IPRConfig(kernel_size=5, rel_threshold=0.1, downsample=1)
    uv = _pixels(far)
    centre = np.all(np.abs(uv - [CAM.cx, CAM.cy]) < 30, axis=1)
    for spacing_px, expect_hidden in ((3.0, True), (12.0, False)):
        step = spacing_px * 5.0 / CAM.fx
        grid = _plane(5.0, (-1.0, 1.0), (-1.0, 1.0), step)  # isolated near samples, a "fence"
        vis = visible_mask(_to_map(np.vstack([grid, far])), T_CAM_MAP, CAM, cfg)
        assert vis[: len(grid)].all()
        hidden_share = 1.0 - vis[len(grid) :][centre].mean()
        if expect_hidden:  # every 5 x 5 window holds a fence sample: far points (except at samples) hidden
            assert hidden_share == 1.0, spacing_px
        else:  # a window fits between samples: only far points in the very pixels of a sample hide
            assert hidden_share < 0.05, spacing_px


def test_ipr_ground_plane_is_not_self_occluded() -> None:
    # Road 1.65 m below the camera, 3..25 m ahead: a slanted surface that plain min-pooling would eat away.
    X, Z = np.meshgrid(np.arange(-6.0, 6.0, 0.02), np.arange(3.0, 25.0, 0.02))
    ground = np.stack([X.ravel(), np.full(X.size, 1.65), Z.ravel()], axis=1)
    proj = CAM.project(ground)
    vis = visible_mask(_to_map(ground), T_CAM_MAP, CAM)
    assert proj.in_image.sum() > 100_000
    assert not (vis != proj.in_image)[~_on_border(proj.uv, CAM)].any()  # the grid puts points on the border


def test_ipr_not_visible_behind_outside_or_nan() -> None:
    p = np.array(
        [
            [0.0, 0.0, 5.0],  # centre: visible
            [0.0, 0.0, -5.0],  # behind
            [0.0, 0.0, 0.0],  # at the centre of projection
            [5.0, 0.0, 5.0],  # right of the image (u = 459.5)
            [0.0, -5.0, 5.0],  # above the image
            [np.nan, 0.0, 5.0],
            [0.0, 0.0, np.inf],
            [(-0.5 + 0.01 - CAM.cx) / CAM.fx * 10, 0.0, 10.0],  # u = -0.49: in the first column
            [(-0.5 - 0.01 - CAM.cx) / CAM.fx * 10, 0.0, 10.0],  # u = -0.51: outside
            [(CAM.width - 0.51 - CAM.cx) / CAM.fx * 10, 0.0, 10.0],  # u = W - 0.51: last column
            [(CAM.width - 0.49 - CAM.cx) / CAM.fx * 10, 0.0, 10.0],  # u = W - 0.49: outside
        ]
    )
    vis = visible_mask(_to_map(p), T_CAM_MAP, CAM)
    assert vis.tolist() == [True, False, False, False, False, False, False, True, False, True, False]


def test_ipr_in_image_matches_camera_projection_with_distortion() -> None:
    # One plane (nothing occludes), a distorted camera: visible must be exactly PinholeCamera.project's in_image.
    cam = PinholeCamera(320, 240, CAM.K, np.array([-0.3, 0.1, 0.001, -0.002, 0.0]))
    rng = np.random.default_rng(1)
    p = np.column_stack([rng.uniform(-6, 6, 50_000), rng.uniform(-4, 4, 50_000), np.full(50_000, 6.0)])
    vis = visible_mask(_to_map(p), T_CAM_MAP, cam)
    proj = cam.project(p)
    assert 0.2 < proj.in_image.mean() < 0.9
    assert not (vis != proj.in_image)[~_on_border(proj.uv, cam)].any()


def test_ipr_window_filter_equals_max_pool2d() -> None:
    g = torch.Generator().manual_seed(0)
    for h, w, k in ((1, 1, 5), (3, 2, 5), (7, 9, 3), (40, 50, 5), (40, 50, 7), (5, 5, 1)):
        d = torch.rand(2, h, w, generator=g)
        d[d < 0.6] = torch.inf
        assert torch.equal(_window_filter(d, k, torch.maximum), max_pool2d(d[:, None], k, 1, k // 2)[:, 0])
        assert torch.equal(_window_filter(d, k, torch.minimum), -max_pool2d(-d[:, None], k, 1, k // 2)[:, 0])


def test_the_compiled_window_filter_is_the_torch_one() -> None:
    """The CPU kernel's min / max filters (the 5 x 5 and 3 x 3 ones with their whole-window rows, and the general
    one) give the torch filter's values on images from the smallest each path takes to a depth image's size."""
    g = torch.Generator().manual_seed(1)
    fives = ((4, 4, 5), (5, 7, 5), (6, 9, 5), (9, 5, 5), (94, 310, 5))
    threes = ((2, 2, 3), (2, 5, 3), (3, 3, 3), (7, 9, 3), (47, 155, 3))
    for h, w, k in fives + threes + ((1, 6, 3), (6, 1, 3), (3, 3, 5), (12, 11, 7)):
        d = torch.rand(h, w, generator=g)
        d[d < 0.6] = torch.inf
        for op, is_min in ((torch.minimum, True), (torch.maximum, False)):
            out = np.empty((h, w), np.float32)
            _min_max_filter(d.numpy(), out, k // 2, is_min)
            np.testing.assert_array_equal(out, _window_filter(d[None], k, op)[0].numpy())


# --------------------------------------------------------------------------- API: batch, types, devices, errors


def _poses() -> np.ndarray:
    return np.stack(
        [T_CAM_MAP]
        + [T_CAM_MAP @ invert(make_T(rotvec_to_matrix([0.0, a, 0.0]), [a * 5, 0.0, -a])) for a in (-0.15, 0.1, 0.2)]
    )


def test_ipr_batched_equals_per_pose() -> None:
    pts = _to_map(_scene())
    Ts = _poses()
    batched = visible_mask(pts, Ts, CAM)
    assert batched.shape == (len(Ts), len(pts))
    single = np.stack([visible_mask(pts, T, CAM) for T in Ts])
    assert np.array_equal(batched, single)
    assert len({m.sum() for m in single}) == len(Ts), "the poses must see different things for this to test anything"
    assert 0.05 < batched.mean() < 0.95


def test_ipr_numpy_and_torch_agree() -> None:
    pts, Ts = _to_map(_scene()), _poses()
    for p32 in (False, True):
        p = pts.astype(np.float32) if p32 else pts
        out_np = visible_mask(p, Ts, CAM)
        out_t = visible_mask(torch.from_numpy(p), torch.from_numpy(Ts), CAM)
        out_mixed = visible_mask(torch.from_numpy(p), Ts, CAM, device="cpu")
        assert isinstance(out_np, np.ndarray) and out_np.dtype == bool
        assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.bool
        assert np.array_equal(out_np, out_t.numpy()) and np.array_equal(out_np, out_mixed.numpy())
    # float32 and float64 may differ only for points right at a cell border or at the threshold.
    diff = visible_mask(pts, Ts, CAM) != visible_mask(pts.astype(np.float32), Ts, CAM)
    assert diff.mean() < 1e-3


def test_ipr_of_points_laid_out_by_coordinate_is_the_same_mask() -> None:
    """``visible_mask_t`` ((3, N) points, as the alignment keeps them) gives ``visible_mask``'s mask bit for bit:
    float32 and float64 (the poses rounded to the points' type, as there), contiguous or not, a camera with
    distortion (the torch path) too; bad input raises."""
    pts, Ts = _to_map(_scene()), _poses()
    distorted = PinholeCamera(320, 240, CAM.K, np.array([-0.3, 0.1, 0.001, -0.002, 0.0]))
    cfg = IPRConfig(kernel_size=3, downsample=4)
    for p in (pts, pts.astype(np.float32)):
        for cam, config in ((CAM, None), (CAM, cfg), (distorted, None)):
            expected = visible_mask(p, Ts, cam, config)
            assert 0.1 < expected.mean() < 0.9  # (walls hide points: the window and threshold matter)
            for p_t in (p.T, np.ascontiguousarray(p.T)):
                np.testing.assert_array_equal(visible_mask_t(p_t, Ts, cam, config), expected)
    assert visible_mask_t(np.zeros((3, 0)), Ts, CAM).shape == (len(Ts), 0)
    for bad, match in ((pts, "must be a \\(3, N\\)"), (pts.T.astype(np.int64), "float32 or float64")):
        with pytest.raises(ValueError, match=match):
            visible_mask_t(bad, Ts, CAM)
    with pytest.raises(ValueError, match="NaN"):
        visible_mask_t(pts.T, np.full((1, 4, 4), np.nan), CAM)
    with pytest.raises(ValueError, match="shape"):
        visible_mask_t(pts.T, T_CAM_MAP, CAM)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_ipr_cuda_matches_cpu() -> None:
    pts, Ts = _to_map(_scene()), _poses()
    cpu = visible_mask(pts, Ts, CAM)
    on_gpu = visible_mask(torch.from_numpy(pts).cuda(), torch.from_numpy(Ts), CAM)
    assert on_gpu.device.type == "cuda"
    via_arg = visible_mask(pts, Ts, CAM, device="cuda")
    assert isinstance(via_arg, np.ndarray)
    # Different float rounding on the GPU may move a few points across a cell border or the threshold.
    assert (on_gpu.cpu().numpy() != cpu).mean() < 1e-3
    assert (via_arg != cpu).mean() < 1e-3


def test_ipr_empty_points() -> None:
    empty = np.zeros((0, 3))
    out = visible_mask(empty, T_CAM_MAP, CAM)
    assert isinstance(out, np.ndarray) and out.shape == (0,) and out.dtype == bool
    assert visible_mask(empty, _poses(), CAM).shape == (4, 0)
    out_t = visible_mask(torch.zeros((0, 3)), T_CAM_MAP, CAM)
    assert isinstance(out_t, torch.Tensor) and out_t.shape == (0,) and out_t.dtype == torch.bool


@pytest.mark.parametrize(
    ("points", "pose", "match"),
    [
        (np.zeros((5, 4)), np.eye(4), r"points must have shape \(N, 3\)"),
        (np.zeros(3), np.eye(4), r"points must have shape \(N, 3\)"),
        (np.zeros((5, 3)), np.eye(4)[:3], r"T_cam_map must have shape"),
        (np.zeros((5, 3)), np.zeros((2, 3, 3)), r"T_cam_map must have shape"),
        (np.zeros((5, 3)), np.full((4, 4), np.nan), "NaN"),
        ([[0.0, 0.0, 1.0]], np.eye(4), "numpy array or torch tensor"),
    ],
)
def test_ipr_bad_input_raises(points: object, pose: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        visible_mask(points, pose, CAM)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"kernel_size": 4}, {"kernel_size": 0}, {"downsample": 0}, {"rel_threshold": -0.1}, {"rel_threshold": np.nan}],
)
def test_ipr_bad_config_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="IPRConfig"):
        IPRConfig(**kwargs)


# --------------------------------------------------------------------------- real KITTI scans


def _kitti(i: int) -> tuple[np.ndarray, np.ndarray, PinholeCamera]:
    size = Image.open(KITTI / "image_2" / f"{i:06d}.png").size
    calib = read_kitti_object_calib(KITTI / "calib" / f"{i:06d}.txt", size)
    return read_velodyne_bin(KITTI / "velodyne" / f"{i:06d}.bin")[:, :3], calib.T_cam_velo, calib.camera


@pytest.mark.parametrize("frame", [0, 1, 2])
def test_ipr_kitti_scan_keeps_near_points_and_removes_a_plausible_share(frame: int) -> None:
    pts, T_cam_velo, cam = _kitti(frame)
    proj = cam.project(transform_points(T_cam_velo, pts.astype(np.float64)))
    vis = visible_mask(pts, T_cam_velo, cam)
    assert not (vis & ~proj.in_image).any()
    near = proj.in_image & (proj.depth < 10.0)
    assert near.sum() > 5000
    # Measured with the defaults (k=5, tau=0.1, downsample=2): near points kept 99.1 / 99.6 / 99.6 %.
    assert vis[near].mean() > 0.98
    # The camera sits ~0.3 m from the LiDAR, so little is truly hidden: what goes is foliage the laser
    # reached through leaves, ground behind bikes and the guard rail. Measured removed share of the in-image
    # points: 4.6 % (frame 0, hedges and bikes), 2.3 % (1, roadside trees), 0.9 % (2).
    removed = 1.0 - vis[proj.in_image].mean()
    assert 0.005 < removed < 0.08


def test_ipr_kitti_virtual_wall_hides_the_scan_behind_it() -> None:
    pts, T_cam_velo, cam = _kitti(1)
    # A 4 m x 1.6 m wall of points 4 m ahead of the camera, expressed in the velodyne (= map) frame.
    wall_cam = _plane(4.0, (-2.0, 2.0), (-0.8, 0.8), 0.01)
    wall = transform_points(invert(T_cam_velo), wall_cam).astype(np.float32)
    before = visible_mask(pts, T_cam_velo, cam)
    after = visible_mask(np.vstack([pts, wall]), T_cam_velo, cam)
    assert after[len(pts) :].all()
    after = after[: len(pts)]

    proj = cam.project(transform_points(T_cam_velo, pts.astype(np.float64)))
    lo = np.array([cam.cx - cam.fx * 0.5, cam.cy - cam.fy * 0.2])  # wall silhouette in pixels
    hi = np.array([cam.cx + cam.fx * 0.5, cam.cy + cam.fy * 0.2])
    m = 12  # the closing looks up to 2 * (k // 2) cells = 8 px away, plus a cell of quantisation
    inside = proj.in_image & np.all((proj.uv > lo + m) & (proj.uv < hi - m), axis=1) & (proj.depth > 4.5)
    outside = proj.in_image & np.any((proj.uv < lo - m) | (proj.uv > hi + m), axis=1)
    assert inside.sum() > 3000
    assert not after[inside].any(), "scan points behind the virtual wall must be hidden"
    assert np.array_equal(after[outside], before[outside]), "points away from the wall are unaffected"


@pytest.mark.parametrize("cfg", [IPRConfig(), IPRConfig(kernel_size=3, rel_threshold=0.05, downsample=3)])
def test_ipr_compiled_path_matches_torch_on_kitti_scans(cfg: IPRConfig) -> None:
    """numpy points on the CPU go through the compiled kernel; torch tensors through torch. Same mask, bit for bit,
    on real scans seen from 12 poses around the true one (float32 and float64, a skewed camera too)."""
    pts, T_cam_velo, cam = _kitti(0)
    K = cam.K.copy()
    K[0, 1] = 2.5
    skewed = PinholeCamera(cam.width, cam.height, K)
    rng = np.random.default_rng(3)
    moves = [make_T(rotvec_to_matrix(rng.normal(0, 0.05, 3)), rng.normal(0, 1.0, 3)) for _ in range(12)]
    Ts = np.stack([m @ T_cam_velo for m in moves])
    for camera in (cam, skewed):
        for p in (pts.astype(np.float32), pts.astype(np.float64)):
            compiled = visible_mask(p, Ts, camera, cfg)
            via_torch = visible_mask(torch.from_numpy(p), torch.from_numpy(Ts), camera, cfg).numpy()
            assert 0.02 < compiled.mean() < 0.5, "the poses must see part of the scan for this to test anything"
            assert np.array_equal(compiled, via_torch)
