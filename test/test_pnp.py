"""Tests of ep2p_loc_ros.pnp: synthetic exactness/robustness, bad input, covariance, and real KITTI frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.optimize import least_squares

from ep2p_loc_ros.calib import read_kitti_object_calib, read_velodyne_bin
from ep2p_loc_ros.geometry import (
    PinholeCamera,
    invert,
    make_T,
    matrix_to_rotvec,
    rotation_angle_deg,
    rotvec_to_matrix,
    transform_points,
)
from ep2p_loc_ros.pnp import (
    BACKENDS,
    PnPConfig,
    PnPStatus,
    PoseEstimate,
    _jacobian,
    _lm_normal_equations,
    _project,
    camera_to_world_jacobian,
    refine_pose_lm,
    solve_pnp,
)

KITTI = Path(__file__).parent / "data" / "kitti_object"
CAM = PinholeCamera.from_params(640, 480, 500.0, 505.0, 319.5, 239.5)


def synthetic(n: int, rng: np.random.Generator, cam: PinholeCamera = CAM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T_cam_world, world points, exact pixels): n in-image points 3-20 m in front of a random camera."""
    T_cam_world = make_T(rotvec_to_matrix(rng.normal(size=3)), rng.uniform(-10, 10, 3))
    z = rng.uniform(3.0, 20.0, 4 * n)
    uv = rng.uniform([0, 0], [cam.width - 1, cam.height - 1], (4 * n, 2))
    xy = (uv - [cam.cx, cam.cy]) / [cam.fx, cam.fy]
    P_cam = np.c_[xy * z[:, None], z][:n]
    X = transform_points(invert(T_cam_world), P_cam)
    proj = cam.project(transform_points(T_cam_world, X))
    assert proj.in_image.all()
    return T_cam_world, X, proj.uv


def pose_errors(T_est: np.ndarray, T_true: np.ndarray) -> tuple[float, float]:
    """Camera-centre error (m) and rotation error (deg) of two T_cam_world."""
    a, b = invert(T_est), invert(T_true)
    return float(np.linalg.norm(a[:3, 3] - b[:3, 3])), rotation_angle_deg(a[:3, :3] @ b[:3, :3].T)


def assert_failed(est: PoseEstimate, status: PnPStatus, n: int) -> None:
    assert est.status is status, est.message
    assert not est.ok
    assert est.message
    assert np.isnan(est.T_cam_world).all() and np.isnan(est.T_world_cam).all()
    assert np.isnan(est.covariance).all()
    assert est.inlier_mask.shape == (n,) and est.inlier_mask.dtype == bool


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("backend", BACKENDS)
def test_pnp_exact_correspondences_give_exact_pose(backend: str) -> None:
    rng = np.random.default_rng(0)
    T, X, uv = synthetic(60, rng)
    est = solve_pnp(X, uv, CAM, PnPConfig(backend=backend))
    assert est.ok, est.message
    np.testing.assert_allclose(est.T_cam_world, T, atol=1e-8)
    assert est.inlier_mask.all() and est.num_inliers == 60 and est.inlier_ratio == 1.0
    assert est.reprojection_error_px < 1e-6
    # A perfect fit still has a positive-definite covariance (min_sigma_px floor), symmetric.
    np.testing.assert_allclose(est.covariance, est.covariance.T)
    assert np.linalg.eigvalsh(est.covariance)[0] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_pnp_four_points_are_enough(backend: str) -> None:
    rng = np.random.default_rng(1)
    T, X, uv = synthetic(4, rng)
    est = solve_pnp(X, uv, CAM, PnPConfig(min_inliers=4, backend=backend))
    assert est.ok, est.message
    t_err, r_err = pose_errors(est.T_cam_world, T)
    assert t_err < 5e-3 and r_err < 0.01  # (a random outlier may land within the threshold)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pnp_noise_and_outliers_close_pose_and_outliers_flagged(backend: str) -> None:
    rng = np.random.default_rng(2)
    n = 600
    T, X, uv = synthetic(n, rng)
    uv = uv + rng.normal(0.0, 1.0, uv.shape)
    outlier = rng.random(n) < 0.4
    uv[outlier] = rng.uniform([0, 0], [CAM.width, CAM.height], (int(outlier.sum()), 2))
    # Outliers far from their true projection must be flagged; a random pixel landing within the threshold
    # of the true one is geometrically an inlier, so only those clearly off are checked.
    far = np.linalg.norm(uv - CAM.project(transform_points(T, X)).uv, axis=1) > 10.0
    est = solve_pnp(X, uv, CAM, PnPConfig(backend=backend))
    assert est.ok, est.message
    t_err, r_err = pose_errors(est.T_cam_world, T)
    assert t_err < 0.05 and r_err < 0.1
    assert not est.inlier_mask[outlier & far].any()
    assert est.inlier_mask[~outlier].mean() > 0.99
    assert 1.2 < est.reprojection_error_px < 1.7  # sqrt(2) for 1 px per axis
    # Errors are consistent with the reported covariance (loose per-trial bound: chi2_6 99.99 % ~ 27.9).
    T_wc, T_wc_true = est.T_world_cam, invert(T)
    e = np.r_[T_wc[:3, 3] - T_wc_true[:3, 3], matrix_to_rotvec(T_wc[:3, :3] @ T_wc_true[:3, :3].T)]
    assert e @ np.linalg.solve(est.covariance, e) < 27.9


def test_pnp_distorted_pixels_are_undistorted_first() -> None:
    rng = np.random.default_rng(3)
    cam = PinholeCamera(640, 480, CAM.K, np.array([-0.25, 0.08, 0.001, -0.0005, 0.0]))
    T, X, _ = synthetic(200, rng)
    proj = cam.project(transform_points(T, X))  # distorted pixels
    keep = proj.in_image
    est = solve_pnp(X[keep], proj.uv[keep], cam)
    assert est.ok, est.message
    t_err, r_err = pose_errors(est.T_cam_world, T)
    assert t_err < 1e-4 and r_err < 1e-4
    assert est.inlier_mask.all()


def test_pnp_weights_are_accepted_and_scale_free() -> None:
    rng = np.random.default_rng(4)
    n = 300
    T, X, uv = synthetic(n, rng)
    uv = uv + rng.normal(0.0, 1.0, uv.shape)
    w = rng.uniform(0.2, 1.0, n)
    w[:20] = 0.0  # zero weight: ignored by the refinement, still allowed
    a = solve_pnp(X, uv, CAM, weights=w)
    b = solve_pnp(X, uv, CAM, weights=10.0 * w)
    c = solve_pnp(X, uv, CAM)
    assert a.ok and b.ok and c.ok
    np.testing.assert_allclose(a.T_cam_world, b.T_cam_world, atol=1e-9)
    np.testing.assert_allclose(a.covariance, b.covariance, rtol=1e-6)
    assert not np.allclose(a.T_cam_world, c.T_cam_world, atol=1e-12)  # the weights did change the solution
    assert pose_errors(a.T_cam_world, T)[0] < 0.05


def test_pnp_lm_converges_from_a_perturbed_start() -> None:
    rng = np.random.default_rng(5)
    T, X, uv = synthetic(100, rng)
    T0 = make_T(rotvec_to_matrix([0.05, -0.03, 0.02]), [0.3, -0.2, 0.5]) @ T
    T_ref, H, r = refine_pose_lm(T0, X, uv, CAM.K)
    np.testing.assert_allclose(T_ref, T, atol=1e-8)
    assert np.abs(r).max() < 1e-6 and H.shape == (6, 6)


def test_pnp_lm_reaches_the_weighted_least_squares_optimum() -> None:
    """Noisy pixels, uneven weights, a skewed camera: the compiled LM ends where SciPy's least_squares (its own
    Jacobian, by finite differences) does, below the true pose's cost; no small move in any of the six directions
    lowers the cost."""
    rng = np.random.default_rng(11)
    K = CAM.K.copy()
    K[0, 1] = 1.5
    skewed = PinholeCamera(CAM.width, CAM.height, K)
    T, X, uv = synthetic(200, rng, skewed)
    uv = uv + rng.normal(0.0, 1.0, uv.shape)
    w = rng.uniform(0.2, 3.0, len(X))

    def cost(T_cw: np.ndarray) -> float:
        r = skewed.project(transform_points(T_cw, X)).uv - uv
        return float(w @ np.sum(r**2, axis=1))

    T0 = make_T(rotvec_to_matrix([0.03, -0.02, 0.01]), [0.2, -0.1, 0.3]) @ T
    T_ref, H, r = refine_pose_lm(T0, X, uv, K, w)
    np.testing.assert_allclose(r, skewed.project(transform_points(T_ref, X)).uv - uv, atol=1e-9)
    best = cost(T_ref)
    assert best < cost(T)

    def residuals(d: np.ndarray) -> np.ndarray:
        T_cw = make_T(rotvec_to_matrix(d[3:]), d[:3]) @ T0
        return ((skewed.project(transform_points(T_cw, X)).uv - uv) * np.sqrt(w)[:, None]).ravel()

    d = least_squares(residuals, np.zeros(6), xtol=1e-15, ftol=1e-15, gtol=1e-15).x
    np.testing.assert_allclose(T_ref, make_T(rotvec_to_matrix(d[3:]), d[:3]) @ T0, atol=1e-8)
    for axis in range(6):
        for step in (1e-4, -1e-4):
            d = np.zeros(6)
            d[axis] = step
            assert cost(make_T(rotvec_to_matrix(d[3:]), d[:3]) @ T_ref) > best
    assert np.all(np.linalg.eigvalsh(H) > 0)
    # the compiled normal equations at the start are numpy's J^T W J and J^T W r
    Hc, gc = np.zeros((6, 6)), np.zeros(6)
    R0, t0 = T0[:3, :3].copy(), T0[:3, 3].copy()
    _lm_normal_equations(R0, t0, X, uv, K, w, Hc, gc)
    proj, Xc, iz = _project(R0, t0, X, K)
    J = _jacobian(Xc, iz, t0, K).reshape(-1, 6) * np.sqrt(np.repeat(w, 2))[:, None]
    np.testing.assert_allclose(Hc, J.T @ J, rtol=1e-10)
    np.testing.assert_allclose(gc, J.T @ ((proj - uv).ravel() * np.sqrt(np.repeat(w, 2))), rtol=1e-10, atol=1e-8)


def test_pnp_start_pose_polishes_without_ransac_and_keeps_its_inliers() -> None:
    """``start``: the inliers of a nearby pose seed LM (no search): the exact pose comes back, the outliers stay
    out; a start too far for any inlier, or not a finite pose, is a clean failure."""
    rng = np.random.default_rng(7)
    n = 300
    T, X, uv = synthetic(n, rng)
    outlier = rng.random(n) < 0.5
    uv[outlier] = rng.uniform([0, 0], [CAM.width, CAM.height], (int(outlier.sum()), 2))
    far = np.linalg.norm(uv - CAM.project(transform_points(T, X)).uv, axis=1) > 10.0
    near = invert(make_T(rotvec_to_matrix([0.002, -0.001, 0.001]), [0.02, -0.01, 0.03]) @ T)  # a few px off
    est = solve_pnp(X, uv, CAM, PnPConfig(), start=near)
    assert est.ok, est.message
    assert "start pose" in est.message
    t_err, r_err = pose_errors(est.T_cam_world, T)
    assert t_err < 5e-3 and r_err < 0.01  # (a random outlier may land within the threshold)
    assert est.inlier_mask[~outlier].all() and not est.inlier_mask[outlier & far].any()
    lost = invert(make_T(rotvec_to_matrix([0.0, 0.6, 0.0]), [5.0, 0.0, 0.0]) @ T)
    assert_failed(solve_pnp(X, uv, CAM, PnPConfig(), start=lost), PnPStatus.TOO_FEW_INLIERS, n)
    bad = np.full((4, 4), np.nan)
    assert_failed(solve_pnp(X, uv, CAM, PnPConfig(), start=bad), PnPStatus.INVALID_INPUT, n)


def test_pnp_covariance_propagation_matches_world_parametrisation() -> None:
    """sigma^2 (J_w^T J_w)^-1 with J_w by finite differences in the documented world model == reported cov."""
    rng = np.random.default_rng(6)
    n = 150
    _, X, uv = synthetic(n, rng)
    uv = uv + rng.normal(0.0, 1.0, uv.shape)
    est = solve_pnp(X, uv, CAM)
    assert est.ok and est.inlier_mask.all()
    T_wc = est.T_world_cam

    def residuals(xi: np.ndarray) -> np.ndarray:
        T = make_T(rotvec_to_matrix(xi[3:]) @ T_wc[:3, :3], T_wc[:3, 3] + xi[:3])  # the documented model
        return (CAM.project(transform_points(invert(T), X)).uv - uv).reshape(-1)

    r0 = residuals(np.zeros(6))
    h = 1e-6
    J = np.stack([(residuals(h * e) - residuals(-h * e)) / (2 * h) for e in np.eye(6)], axis=1)
    sigma2 = r0 @ r0 / (2 * n - 6)
    cov = sigma2 * np.linalg.inv(J.T @ J)
    np.testing.assert_allclose(est.covariance, cov, rtol=1e-4, atol=1e-12)
    # and the analytic camera->world Jacobian agrees with a numeric one
    T_cw = est.T_cam_world
    G = camera_to_world_jacobian(T_cw)

    def world_delta(d: np.ndarray) -> np.ndarray:
        T = invert(make_T(rotvec_to_matrix(d[3:]) @ T_cw[:3, :3], T_cw[:3, 3] + d[:3]))
        return np.r_[T[:3, 3] - T_wc[:3, 3], matrix_to_rotvec(T[:3, :3] @ T_wc[:3, :3].T)]

    G_num = np.stack([(world_delta(h * e) - world_delta(-h * e)) / (2 * h) for e in np.eye(6)], axis=1)
    np.testing.assert_allclose(G, G_num, atol=1e-6)


# --------------------------------------------------------------------------- bad input / degenerate


@pytest.mark.parametrize("n", [0, 1, 3])
def test_pnp_too_few_points(n: int) -> None:
    _, X, uv = synthetic(max(n, 1), np.random.default_rng(7))
    assert_failed(solve_pnp(X[:n], uv[:n], CAM), PnPStatus.TOO_FEW_POINTS, n)


@pytest.mark.parametrize(
    ("points", "pixels"),
    [
        (np.zeros((10, 3)), np.zeros((9, 2))),  # mismatched N
        (np.zeros((10, 2)), np.zeros((10, 2))),  # points not (N, 3)
        (np.zeros((10, 3)), np.zeros((10, 3))),  # pixels not (N, 2)
        (np.zeros(30), np.zeros(20)),  # flat
        ([["a", "b", "c"]] * 5, [[1.0, 2.0]] * 5),  # not numeric
        ([[1.0, 2.0, 3.0], [1.0, 2.0]], [[1.0, 2.0]] * 2),  # ragged
    ],
)
def test_pnp_invalid_shapes_are_reported(points: object, pixels: object) -> None:
    est = solve_pnp(points, pixels, CAM)  # type: ignore[arg-type]
    assert est.status is PnPStatus.INVALID_INPUT and not est.ok and est.message
    assert np.isnan(est.T_cam_world).all()


def test_pnp_invalid_weights_are_reported() -> None:
    _, X, uv = synthetic(20, np.random.default_rng(8))
    assert_failed(solve_pnp(X, uv, CAM, weights=np.ones(19)), PnPStatus.INVALID_INPUT, 20)
    w = np.ones(20)
    w[3] = -1.0
    assert_failed(solve_pnp(X, uv, CAM, weights=w), PnPStatus.INVALID_INPUT, 20)


def test_pnp_nan_rows_are_dropped_when_enough_remain() -> None:
    rng = np.random.default_rng(9)
    T, X, uv = synthetic(50, rng)
    X, uv = X.copy(), uv.copy()
    X[3, 1] = np.nan
    uv[7, 0] = np.inf
    w = np.ones(50)
    w[11] = np.nan
    est = solve_pnp(X, uv, CAM, weights=w)
    assert est.ok, est.message
    assert "dropped" in est.message
    assert not est.inlier_mask[[3, 7, 11]].any() and est.num_inliers == 47
    assert pose_errors(est.T_cam_world, T)[0] < 1e-6


def test_pnp_nan_rows_too_many_or_all() -> None:
    _, X, uv = synthetic(10, np.random.default_rng(10))
    uv = uv.copy()
    uv[:7] = np.nan
    assert_failed(solve_pnp(X, uv, CAM), PnPStatus.TOO_FEW_POINTS, 10)
    uv[:] = np.nan
    assert_failed(solve_pnp(X, uv, CAM), PnPStatus.INVALID_INPUT, 10)


def test_pnp_degenerate_geometry() -> None:
    rng = np.random.default_rng(11)
    _, X, uv = synthetic(30, rng)
    coincident = np.tile([1.0, 2.0, 10.0], (30, 1))
    assert_failed(solve_pnp(coincident, uv, CAM), PnPStatus.DEGENERATE, 30)
    s = np.linspace(0.0, 1.0, 30)[:, None]
    collinear = np.array([0.0, 0.0, 5.0]) + s * np.array([1.0, 0.5, 3.0])
    assert_failed(solve_pnp(collinear, CAM.project(collinear).uv, CAM), PnPStatus.DEGENERATE, 30)
    assert_failed(solve_pnp(X, np.tile([320.0, 240.0], (30, 1)), CAM), PnPStatus.DEGENERATE, 30)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pnp_pure_outliers_fail_cleanly(backend: str) -> None:
    rng = np.random.default_rng(12)
    _, X, _ = synthetic(100, rng)
    uv = rng.uniform([0, 0], [CAM.width, CAM.height], (100, 2))
    est = solve_pnp(X, uv, CAM, PnPConfig(backend=backend, min_inliers=20))
    assert est.status in (PnPStatus.RANSAC_FAILED, PnPStatus.TOO_FEW_INLIERS)
    assert_failed(est, est.status, 100)


def test_pnp_backend_exception_becomes_status(monkeypatch: pytest.MonkeyPatch) -> None:
    import ep2p_loc_ros.pnp as pnp

    def boom(*_: object) -> None:
        raise RuntimeError("library exploded")

    monkeypatch.setitem(pnp._BACKEND_FN, "opencv_usac", boom)
    _, X, uv = synthetic(20, np.random.default_rng(13))
    est = solve_pnp(X, uv, CAM)
    assert_failed(est, PnPStatus.RANSAC_FAILED, 20)
    assert "library exploded" in est.message


def test_pnp_config_rejects_bad_values() -> None:
    for kwargs in (
        {"backend": "magic"},
        {"reprojection_threshold_px": 0.0},
        {"confidence": 1.0},
        {"min_inliers": 3},
        {"ransac_max_iterations": 0},
        {"max_inlier_rounds": 0},
    ):
        with pytest.raises(ValueError):
            PnPConfig(**kwargs)  # type: ignore[arg-type]


def test_pnp_default_estimate_is_not_ok() -> None:
    est = PoseEstimate()
    assert not est.ok and est.num_inliers == 0 and est.inlier_ratio == 0.0
    assert np.isnan(est.T_world_cam).all()


# --------------------------------------------------------------------------- real KITTI frames


def _kitti_frame(stem: str) -> tuple[PinholeCamera, np.ndarray, np.ndarray, np.ndarray]:
    """Camera, in-image LiDAR points (velodyne frame = world), their exact pixels, and the true T_cam_velo."""
    with Image.open(KITTI / "image_2" / f"{stem}.png") as im:
        size = im.size
    calib = read_kitti_object_calib(KITTI / "calib" / f"{stem}.txt", size)
    pts = read_velodyne_bin(KITTI / "velodyne" / f"{stem}.bin")[:, :3].astype(np.float64)
    proj = calib.camera.project(transform_points(calib.T_cam_velo, pts))
    keep = proj.in_image & (proj.depth > 1.0)
    return calib.camera, pts[keep], proj.uv[keep], calib.T_cam_velo


@pytest.fixture(scope="module")
def kitti_frames() -> dict[str, tuple[PinholeCamera, np.ndarray, np.ndarray, np.ndarray]]:
    return {stem: _kitti_frame(stem) for stem in ("000000", "000001", "000002")}


def _kitti_trial(frame: tuple, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n real points, 1 px noise, 50 % of pixels replaced by random in-image pixels."""
    cam, pts, uv_true, _ = frame
    idx = rng.choice(len(pts), size=n, replace=False)
    uv = uv_true[idx] + rng.normal(0.0, 1.0, (n, 2))
    out = rng.random(n) < 0.5
    uv[out] = rng.uniform([-0.5, -0.5], [cam.width - 0.5, cam.height - 0.5], (int(out.sum()), 2))
    return pts[idx], uv, out


@pytest.mark.parametrize("stem", ["000000", "000001", "000002"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_pnp_kitti_recovers_lidar_camera_calibration(kitti_frames: dict, stem: str, backend: str) -> None:
    frame = kitti_frames[stem]
    cam, pts, _, T_cam_velo = frame
    assert len(pts) > 5000  # a real scan, not a stub
    rng = np.random.default_rng(int(stem) + 100)
    for n in (300, 2000):
        X, uv, out = _kitti_trial(frame, n, rng)
        est = solve_pnp(X, uv, cam, PnPConfig(backend=backend))
        assert est.ok, est.message
        t_err, r_err = pose_errors(est.T_cam_world, T_cam_velo)
        assert t_err < 0.05 and r_err < 0.2, (n, t_err, r_err)
        assert est.inlier_mask[~out].mean() > 0.99
        assert abs(est.inlier_ratio - 0.5) < 0.1


def test_pnp_kitti_covariance_is_consistent_nees(kitti_frames: dict) -> None:
    """Mean NEES of the 6-DoF T_world_cam error over 200 seeded trials is ~6 (dof): the covariance is honest."""
    rng = np.random.default_rng(2023)
    frames = list(kitti_frames.values())
    nees = []
    for k in range(200):
        frame = frames[k % len(frames)]
        X, uv, _ = _kitti_trial(frame, 400, rng)
        est = solve_pnp(X, uv, frame[0])
        assert est.ok, est.message
        T_wc, T_wc_true = est.T_world_cam, invert(frame[3])
        e = np.r_[T_wc[:3, 3] - T_wc_true[:3, 3], matrix_to_rotvec(T_wc[:3, :3] @ T_wc_true[:3, :3].T)]
        nees.append(float(e @ np.linalg.solve(est.covariance, e)))
    mean_nees = float(np.mean(nees))
    print(f"mean NEES over {len(nees)} KITTI trials: {mean_nees:.2f} (ideal 6)")
    assert 4.0 <= mean_nees <= 8.0, mean_nees
