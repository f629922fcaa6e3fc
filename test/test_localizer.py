"""The Localizer's plumbing, checked exactly: retrieval / prior -> IPR -> matching -> pixel scaling -> PnP.

The learned parts are replaced by an oracle: the map's per-point "features" encode each point's true pixel in
the network image of one frame, and the oracle head decodes them. Whatever the Localizer does around the head
(submap choice, IPR at the guess, thinning, network -> image pixel scaling, PnP, statuses) must then give the
true camera pose. Statuses for bad input are checked on the same set-up.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
from ep2p_loc_ros.errors import DataError
from ep2p_loc_ros.geometry import invert, transform_points
from ep2p_loc_ros.localizer import LocalizationStatus, Localizer, LocalizerConfig
from ep2p_loc_ros.map import MapBuildParams, build_map
from ep2p_loc_ros.model.config import ModelConfig
from ep2p_loc_ros.model.heads import MatchingHead
from ep2p_loc_ros.model.preprocess import prepare_image
from ep2p_loc_ros.pose_hypotheses import pose_agreement

FRAME = 2
MC = ModelConfig()


def _encode_pixels(points: np.ndarray, T_cam_map: np.ndarray, cam_net) -> np.ndarray:
    """(n, D) features: [visible flag, u integer/1024, u fraction, v integer/1024, v fraction, 0 ...].

    Integers over 1024 and fractions in [0, 1) survive the map's float16 storage to ~1e-3 px.
    """
    proj = cam_net.project(transform_points(T_cam_map, points.astype(np.float64)))
    ok = proj.in_image & (proj.depth > 1.0)
    uv = np.where(ok[:, None], proj.uv, 0.0)
    f = np.zeros((len(points), MC.feature_dim), np.float32)
    f[:, 0] = ok
    ui, vi = np.floor(uv[:, 0]), np.floor(uv[:, 1])
    f[:, 1], f[:, 2], f[:, 3], f[:, 4] = ui / 1024, uv[:, 0] - ui, vi / 1024, uv[:, 1] - vi
    return f


class OracleHead(MatchingHead):
    """Decodes the true pixels that ``_encode_pixels`` put into the features."""

    def match(self, point_features, patch_features, min_confidence=0.0, max_per_patch=0, max_matches=0, **guide):
        f = point_features.double()
        idx = torch.nonzero(f[:, 0] > 0.5)[:, 0]
        u = f[idx, 1] * 1024 + f[idx, 2]
        v = f[idx, 3] * 1024 + f[idx, 4]
        return idx, torch.stack([u, v], 1).float(), torch.ones(len(idx))

    def refine_pixels(self, point_features, patch_features, pixels):
        return pixels  # the oracle's pixels are exact already


class FakeSession:
    """Stands in for the ONNX image encoder: fixed patch features and a chosen global descriptor."""

    def __init__(self, descriptor: np.ndarray) -> None:
        self.descriptor = descriptor

    def run(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = MC.grid_size
        return np.zeros((1, MC.feature_dim, rows, cols), np.float32), self.descriptor[None].astype(np.float32)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from ep2p_loc_ros.sim.writer import SimConfig, generate_sequence

    root = tmp_path_factory.mktemp("loc") / "seq"
    generate_sequence(root, SimConfig(kind="outdoor", frames=4, seed=21, rate_hz=2.0), progress=False)
    seq = KittiOdometrySequence(root)
    T_cam_map = invert(seq.T_world_cam(FRAME))
    _, cam_net = prepare_image(seq.image(FRAME), seq.calib.camera, MC)

    def feature_fn(sub):
        desc = np.zeros(MC.global_dim, np.float32)
        desc[sub.id % MC.global_dim] = 1.0  # submap s is retrieved by the one-hot descriptor e_s
        return _encode_pixels(sub.points, T_cam_map, cam_net), desc

    lidar_map = build_map(seq, MapBuildParams(spacing=4.0, radius=40.0), feature_fn, progress=False)
    return seq, lidar_map


def _cfg(**cfg) -> LocalizerConfig:
    """The oracle lives in the map's stored features, so the run-time point encoding is off here; and the oracle's
    poses are exact, so the reflectance alignment is off unless a test turns it on."""
    from ep2p_loc_ros.reflectance_alignment import AlignmentConfig

    off = AlignmentConfig(after_retrieval=False, in_tracking=False)
    return LocalizerConfig(**{"encode_points_at_runtime": False, "alignment": off, **cfg})


def _localizer(lidar_map, descriptor, **cfg) -> Localizer:
    return Localizer(lidar_map, FakeSession(descriptor), OracleHead(MC), MC, _cfg(**cfg))


def _errors(T_est: np.ndarray, T_gt: np.ndarray) -> tuple[float, float]:
    dR = T_est[:3, :3] @ T_gt[:3, :3].T
    ang = np.degrees(np.arccos(np.clip((np.trace(dR) - 1) / 2, -1, 1)))
    return float(np.linalg.norm(T_est[:3, 3] - T_gt[:3, 3])), float(ang)


def test_localizer_recovers_the_true_pose_through_retrieval(scene):
    seq, lidar_map = scene
    from ep2p_loc_ros.map import nearest_submaps

    T_gt = seq.T_world_cam(FRAME)
    true_id = int(nearest_submaps(lidar_map, T_gt, 1)[0][0])
    desc = np.zeros(MC.global_dim, np.float32)
    desc[true_id] = 1.0
    res = _localizer(lidar_map, desc, top_k=1).localize(seq.image(FRAME), seq.calib.camera)
    assert res.status is LocalizationStatus.OK, res.message
    assert res.retrieved == (true_id,) and res.submap_id == true_id
    t_err, r_err = _errors(res.T_map_cam, T_gt)
    assert t_err < 0.02 and r_err < 0.05
    assert res.num_inliers > 0.95 * res.num_matches > 500
    assert np.all(np.linalg.eigvalsh(res.covariance) > 0)
    assert set(res.timings_ms) >= {"preprocess", "image_encoder", "retrieval", "ipr", "matching", "pnp", "total"}
    # The matched pixels are in original-image pixels: they reproject from the true pose.
    proj = seq.calib.camera.project(transform_points(invert(T_gt), res.matched_points))
    assert np.median(np.linalg.norm(proj.uv - res.matched_pixels, axis=1)) < 0.05


def test_localizer_runs_with_its_thread_count_and_restores_the_callers(scene):
    seq, lidar_map = scene
    seen = []

    class CountingHead(OracleHead):
        def match(self, *args, **kwargs):
            seen.append(torch.get_num_threads())
            return super().match(*args, **kwargs)

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    desc = np.zeros(MC.global_dim, np.float32)
    loc = Localizer(lidar_map, FakeSession(desc), CountingHead(MC), MC, _cfg(top_k=1, threads=wanted))
    assert loc.localize(seq.image(FRAME), seq.calib.camera).status is not LocalizationStatus.BAD_INPUT
    assert seen and set(seen) == {wanted}  # torch work inside the pipeline ran with the configured count
    assert torch.get_num_threads() == before  # and the process-wide setting is the caller's again


def test_localizer_with_a_prior_skips_retrieval(scene):
    seq, lidar_map = scene
    T_gt = seq.T_world_cam(FRAME)
    prior = T_gt.copy()
    prior[:3, 3] += [1.0, -0.5, 0.0]  # a prior a metre off still selects the right submap and IPR view
    wrong = np.zeros(MC.global_dim, np.float32)  # retrieval would be useless: it must not be used
    res = _localizer(lidar_map, wrong).localize(seq.image(FRAME), seq.calib.camera, prior)
    assert res.ok, res.message
    assert _errors(res.T_map_cam, T_gt)[0] < 0.02


def test_localizer_ipr_ablation_matches_more_points(scene):
    seq, lidar_map = scene
    prior = seq.T_world_cam(FRAME)
    desc = np.zeros(MC.global_dim, np.float32)
    with_ipr = _localizer(lidar_map, desc, max_points=10**7, max_matches=10**7).localize(
        seq.image(FRAME), seq.calib.camera, prior
    )
    without = _localizer(lidar_map, desc, max_points=10**7, max_matches=10**7, use_ipr=False).localize(
        seq.image(FRAME), seq.calib.camera, prior
    )
    assert with_ipr.ok and without.ok
    assert without.num_matches > with_ipr.num_matches  # hidden points get matched too without IPR


def test_localizer_statuses_for_bad_input(scene):
    seq, lidar_map = scene
    desc = np.zeros(MC.global_dim, np.float32)
    loc = _localizer(lidar_map, desc)
    cam = seq.calib.camera
    assert loc.localize(np.zeros((10, 10, 3), np.uint8), cam).status is LocalizationStatus.BAD_INPUT
    assert loc.localize(seq.image(FRAME)[..., 0], cam).status is LocalizationStatus.BAD_INPUT
    nan_prior = np.full((4, 4), np.nan)
    res = loc.localize(seq.image(FRAME), cam, nan_prior)
    assert res.status is LocalizationStatus.BAD_INPUT and "prior" in res.message
    assert not np.isfinite(res.T_map_cam).any()
    # A prior far outside the map (the robot left it): no submap near it, so no pose.
    far = seq.T_world_cam(FRAME).copy()
    far[:3, 3] += [5000.0, 0, 0]
    res = loc.localize(seq.image(FRAME), cam, far)
    assert res.status is LocalizationStatus.NO_SUBMAP and "outside the map" in res.message


def test_localizer_refuses_a_map_built_for_another_model(scene):
    _, lidar_map = scene
    other = ModelConfig(feature_dim=32)
    with pytest.raises(DataError, match="32"):
        Localizer(lidar_map, FakeSession(np.zeros(128)), MatchingHead(other), other)


def test_localizer_collapsed_matches_are_degenerate_not_a_pose(scene):
    """Every point matched into a few patches (an untrained model does this): PNP_FAILED, never a pose."""
    seq, lidar_map = scene

    class CollapsedHead(OracleHead):
        def match(self, point_features, patch_features, *limits, **guide):
            idx, px, conf = super().match(point_features, patch_features, *limits, **guide)
            return idx, torch.floor(px / 400) * 400 + 100, conf  # snapped to a handful of pixels

    loc = Localizer(lidar_map, FakeSession(np.zeros(128)), CollapsedHead(MC), MC, _cfg())
    res = loc.localize(seq.image(FRAME), seq.calib.camera, seq.T_world_cam(FRAME))
    assert res.status in (LocalizationStatus.PNP_FAILED,), res.message
    assert not np.isfinite(res.T_map_cam).any()


def test_localizer_config_from_dict_names_bad_keys():
    cfg = LocalizerConfig.from_dict({"top_k": 5, "ipr": {"kernel_size": 7}, "pnp": {}})
    assert cfg.top_k == 5 and cfg.ipr.kernel_size == 7
    assert LocalizerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(DataError, match="unknown parameter"):
        LocalizerConfig.from_dict({"topk": 3})
    with pytest.raises(DataError, match=r"config\.use_ipr"):
        LocalizerConfig.from_dict({"use_ipr": "yes"})
    with pytest.raises(DataError, match=r"config\.ipr"):
        LocalizerConfig.from_dict({"ipr": {"kernel_size": 4}})


def test_localizer_cap_per_patch_keeps_the_most_confident_matches_of_each_patch():
    from ep2p_loc_ros.localizer import _cap_per_patch

    # patch (0, 0) holds matches 0, 1, 2; match 3 is in another patch; match 4 is in patch (0, 1)
    px = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [100.0, 50.0], [9.0, 1.0]])
    conf = torch.tensor([0.1, 0.5, 0.3, 0.2, 0.9])
    assert _cap_per_patch(px, conf, MC, 2).tolist() == [4, 1, 2, 3]
    assert _cap_per_patch(px, conf, MC, 1).tolist() == [4, 1, 3]
    assert _cap_per_patch(px, conf, MC, 5).tolist() == [4, 1, 2, 3, 0]


def test_localizer_cap_per_patch_turns_a_pile_into_a_pose(scene):
    """Half the points piled onto one patch (the look-alike failure): without the cap the pile outvotes the
    true matches in the PnP weights; with it the oracle pose comes back."""
    seq, lidar_map = scene

    class PilingHead(OracleHead):
        def match(self, point_features, patch_features, *limits, **guide):
            idx, px, conf = super().match(point_features, patch_features, *limits, **guide)
            pile = torch.arange(len(idx)) % 2 == 0
            px[pile] = torch.tensor([300.5, 100.5])
            conf[pile] = 0.9  # the pile is confident, the true matches less so
            conf[~pile] = 0.5
            return idx, px, conf

    cfg = _cfg(max_matches=1000)
    loc = Localizer(lidar_map, FakeSession(np.zeros(128)), PilingHead(MC), MC, cfg)
    res = loc.localize(seq.image(FRAME), seq.calib.camera, seq.T_world_cam(FRAME))
    assert res.ok, res.message
    assert _errors(res.T_map_cam, seq.T_world_cam(FRAME))[0] < 0.05
    uncapped = Localizer(
        lidar_map,
        FakeSession(np.zeros(128)),
        PilingHead(MC),
        MC,
        _cfg(max_matches=1000, max_matches_per_patch=0, prior_max_matches_per_patch=0),
    )
    res0 = uncapped.localize(seq.image(FRAME), seq.calib.camera, seq.T_world_cam(FRAME))
    assert not res0.ok  # the top 1000 by confidence are all the pile: degenerate


def test_localizer_runtime_point_encoding_needs_the_encoder(scene):
    seq, lidar_map = scene
    loc = Localizer(lidar_map, FakeSession(np.zeros(128)), OracleHead(MC), MC, _cfg(encode_points_at_runtime=True))
    with pytest.raises(DataError, match="point encoder"):
        loc.localize(seq.image(FRAME), seq.calib.camera, seq.T_world_cam(FRAME))


def test_localizer_runtime_point_encoding_encodes_the_view_like_training(scene):
    """The guess view's crop at the encoder's density, features from the encoder itself (what training saw)."""
    from ep2p_loc_ros.model.dataset import frustum_mask
    from ep2p_loc_ros.model.point_encoder import PointEncoder, cell_priority, voxel_downsample

    seq, lidar_map = scene
    torch.manual_seed(0)
    enc = PointEncoder(MC).eval()
    loc = Localizer(
        lidar_map,
        FakeSession(np.zeros(128)),
        OracleHead(MC),
        MC,
        _cfg(encode_points_at_runtime=True),
        point_encoder=enc,
    )
    T = seq.T_world_cam(FRAME)
    sub = lidar_map.submap(0)
    pts, feats = loc._encode_view(sub, T, seq.calib.camera)
    crop = frustum_mask(sub.points, invert(T), seq.calib.camera)
    pv, rv, _ = voxel_downsample(sub.points[crop], sub.reflectance[crop], MC.point_voxel)
    assert pts.shape == (len(pv), 3) and feats.shape == (len(pv), MC.feature_dim)
    np.testing.assert_allclose(pts, pv, atol=1e-5)
    with torch.no_grad():
        ref = enc((pv - T[:3, 3]).astype(np.float32), rv, priority=cell_priority(pv, MC.point_voxel)).features.numpy()
    np.testing.assert_allclose(feats, ref, atol=1e-5)
    # far from the map there is nothing to encode
    far = T.copy()
    far[:3, 3] += [0, 0, 500.0]
    assert len(loc._encode_view(sub, far, seq.calib.camera)[0]) == 0


class CodedSession(FakeSession):
    """Patch features: a fixed random unit code per patch, so a point's feature can name the patches it matches."""

    def __init__(self, codes: np.ndarray) -> None:
        super().__init__(np.zeros(MC.global_dim))
        self.codes = codes  # (P, D)

    def run(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = MC.grid_size
        patch = self.codes.T.reshape(1, MC.feature_dim, rows, cols).astype(np.float32)
        return patch, self.descriptor[None].astype(np.float32)


def _mirror_map(seq) -> tuple[object, np.ndarray]:
    """A map whose point features look a little more like the mirror image (left-right) of each point's true
    patch at ``FRAME`` than like the true one, with patch ``codes`` (P, D) for :class:`CodedSession`: the
    repeated-facade failure. Submap ``s`` is retrieved by the one-hot descriptor ``e_s``."""
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(MC.num_patches, MC.feature_dim))
    codes /= np.linalg.norm(codes, axis=1, keepdims=True)
    rows, cols = MC.grid_size
    T_gt = seq.T_world_cam(FRAME)
    _, cam_net = prepare_image(seq.image(FRAME), seq.calib.camera, MC)

    def feature_fn(sub):
        proj = cam_net.project(transform_points(invert(T_gt), sub.points.astype(np.float64)))
        ok = proj.in_image & (proj.depth > 1.0)
        uv = np.where(ok[:, None], proj.uv, 0.0)
        s = MC.patch_stride
        col = np.clip(np.floor((uv[:, 0] + 0.5) / s), 0, cols - 1).astype(int)
        row = np.clip(np.floor((uv[:, 1] + 0.5) / s), 0, rows - 1).astype(int)
        true, mirror = row * cols + col, row * cols + (cols - 1 - col)
        f = np.where(ok[:, None], 0.9 * codes[true] + codes[mirror], rng.normal(size=(len(ok), MC.feature_dim)))
        desc = np.zeros(MC.global_dim, np.float32)
        desc[sub.id % MC.global_dim] = 1.0
        return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32), desc

    return build_map(seq, MapBuildParams(spacing=4.0, radius=40.0), feature_fn, progress=False), codes


def test_localizer_prior_guided_matching_rejects_look_alike_patches(scene):
    """Every point looks a little more like the mirror image of its true patch (the repeated-facade failure),
    through the real matching head. Matched over the whole image, the mirror wins and no right pose comes out;
    matched only near where a prior 1 m / 3 degrees off projects each point (a hard window, or a soft prior
    whose spread depends on each point's depth), the true patch wins and the pose is recovered far closer than
    the prior was."""
    from ep2p_loc_ros.geometry import rotvec_to_matrix

    seq, _ = scene
    lidar_map, codes = _mirror_map(seq)
    T_gt = seq.T_world_cam(FRAME)
    prior = T_gt.copy()
    prior[:3, :3] = rotvec_to_matrix(np.radians([1.0, 2.5, 1.0])) @ T_gt[:3, :3]
    prior[:3, 3] += [0.6, -0.3, 0.7]
    prior_err = _errors(prior, T_gt)
    session = CodedSession(codes)

    def run(**cfg):
        loc = Localizer(lidar_map, session, MatchingHead(MC), MC, _cfg(refine_pixels=False, **cfg))
        return loc.localize(seq.image(FRAME), seq.calib.camera, prior)

    unguided = run(prior_radius_px=0.0, guided_rounds=0)
    assert not unguided.ok or _errors(unguided.T_map_cam, T_gt)[0] > 2.0
    guided = run(prior_radius_px=64.0, guided_rounds=2)
    assert guided.ok, guided.message
    t_err, r_err = _errors(guided.T_map_cam, T_gt)
    assert t_err < 0.3 * prior_err[0] and r_err < 0.3 * prior_err[1], (t_err, r_err, prior_err)
    # A window as wide as the image lets the mirror win again; the soft prior (the spread a prior 1 m / 3 degrees
    # off gives each point at its depth) brings the true patch back, in one matching pass.
    wide = run(prior_radius_px=1000.0, prior_sigma_m=0.0, prior_sigma_deg=0.0)
    assert not wide.ok or _errors(wide.T_map_cam, T_gt)[0] > 2.0
    soft = run(prior_radius_px=1000.0, prior_sigma_m=1.0, prior_sigma_deg=3.0)
    assert soft.ok, soft.message
    t_err, r_err = _errors(soft.T_map_cam, T_gt)
    assert t_err < 0.3 * prior_err[0] and r_err < 0.3 * prior_err[1], (t_err, r_err, prior_err)


def test_evaluate_sequence_tracks_from_a_perturbed_prior(scene):
    """``evaluate_sequence(use_prior, prior_noise)``: priors off by exactly the asked amount, and the oracle
    still localizes every frame from them (the score is the localizer's, not the prior's)."""
    from ep2p_loc_ros.evaluation.evaluate import _perturb, evaluate_sequence

    seq, lidar_map = scene
    T = seq.T_world_cam(FRAME)
    rng = np.random.default_rng(3)
    for _ in range(5):
        t_err, r_err = _errors(_perturb(T, 1.5, 4.0, rng), T)
        assert abs(t_err - 1.5) < 1e-9 and abs(r_err - 4.0) < 1e-6
    seen = []

    class Recording(Localizer):
        def localize(self, rgb, camera, T_map_cam_prior=None, source="image"):
            seen.append(T_map_cam_prior)
            return super().localize(rgb, camera, T_map_cam_prior, source)

    loc = Recording(lidar_map, FakeSession(np.zeros(MC.global_dim)), OracleHead(MC), MC, _cfg())
    ev = evaluate_sequence(loc, seq, stride=2, use_prior=True, prior_noise=(1.0, 3.0), progress=False)
    assert len(seen) == 2 and all(p is not None for p in seen)
    errs = [_errors(p, seq.T_world_cam(f)) for p, f in zip(seen, ev.frames, strict=True)]
    assert all(abs(e[0] - 1.0) < 1e-9 and abs(e[1] - 3.0) < 1e-6 for e in errs)
    # The oracle encodes FRAME's pixels, so that frame comes back exact from its 1 m / 3 degree prior.
    res = ev.results[ev.frames.index(FRAME)]
    assert res.ok, res.message
    assert _errors(res.T_map_cam, seq.T_world_cam(FRAME))[0] < 0.02
    assert ev.summary()["frames"] == 2


def test_localizer_encodes_each_submap_once_per_frame(scene):
    """Guided rounds reuse the run-time point encoding of their submap (the slow stage) instead of redoing it."""
    from ep2p_loc_ros.model.point_encoder import PointEncoder, PointEncoderOutput

    seq, lidar_map = scene
    T_gt = seq.T_world_cam(FRAME)
    _, cam_net = prepare_image(seq.image(FRAME), seq.calib.camera, MC)
    calls = []

    class OracleEncoder(PointEncoder):
        """Encodes the true pixels (the prior is the true pose, so its translation undoes the local frame)."""

        def forward(self, points, reflectance, chunk_size=4096, priority=None):
            calls.append(len(points))
            pts = np.asarray(points, np.float64) + T_gt[:3, 3]
            feats = torch.from_numpy(_encode_pixels(pts, invert(T_gt), cam_net))
            return PointEncoderOutput(feats, torch.zeros(MC.global_dim))

    cfg = _cfg(guided_rounds=2, prior_top_k=1, encode_points_at_runtime=True)
    loc = Localizer(lidar_map, FakeSession(np.zeros(128)), OracleHead(MC), MC, cfg, point_encoder=OracleEncoder(MC))
    res = loc.localize(seq.image(FRAME), seq.calib.camera, T_gt)
    assert res.ok, res.message
    assert _errors(res.T_map_cam, T_gt)[0] < 0.05
    assert len(calls) == 1


def test_localizer_global_guided_rounds_rematch_around_the_global_pose(scene):
    """``global_guided_rounds``: after a global search (no prior), that many guided passes, each around the pose
    just found with the radius halved; 0 keeps the global result as it is."""
    from ep2p_loc_ros.map import nearest_submaps

    seq, lidar_map = scene
    T_gt = seq.T_world_cam(FRAME)
    desc = np.zeros(MC.global_dim, np.float32)
    desc[int(nearest_submaps(lidar_map, T_gt, 1)[0][0])] = 1.0
    radii = []

    class Recording(OracleHead):
        def match(self, *args, expected=None, radius=None, **kwargs):
            radii.append(radius)
            return super().match(*args, **kwargs)

    for rounds in (0, 2):
        radii.clear()
        cfg = _cfg(top_k=1, global_guided_rounds=rounds, guided_radius_px=40.0)
        res = Localizer(lidar_map, FakeSession(desc), Recording(MC), MC, cfg).localize(
            seq.image(FRAME), seq.calib.camera
        )
        assert res.ok, res.message
        assert _errors(res.T_map_cam, T_gt)[0] < 0.02
        assert radii == [math.inf, 40.0, 20.0][: 1 + rounds]  # inf: the soft prior after retrieval, no window


def test_localizer_pools_the_retrieved_submaps_into_one_matching_pass(scene):
    """With stored features, the top-k submaps' views are matched once (their union) and PnP runs from each
    viewpoint; ``pool_submaps=False`` matches each submap on its own. Both find the true pose and its submap."""
    from ep2p_loc_ros.map import nearest_submaps

    seq, lidar_map = scene
    T_gt = seq.T_world_cam(FRAME)
    true_id = int(nearest_submaps(lidar_map, T_gt, 1)[0][0])
    desc = np.zeros(MC.global_dim, np.float32)
    desc[true_id] = 1.0
    sizes = []

    class Counting(OracleHead):
        def match(self, point_features, *args, **kwargs):
            sizes.append(len(point_features))
            return super().match(point_features, *args, **kwargs)

    for pool, calls in ((True, 1), (False, 3)):
        sizes.clear()
        loc = Localizer(lidar_map, FakeSession(desc), Counting(MC), MC, _cfg(top_k=3, pool_submaps=pool))
        res = loc.localize(seq.image(FRAME), seq.calib.camera)
        assert res.ok, res.message
        assert len(res.retrieved) == 3 and res.submap_id == true_id
        assert _errors(res.T_map_cam, T_gt)[0] < 0.02
        assert len(sizes) == calls
    # the pooled pass saw each map point once: no more than the three views together, no duplicates
    pooled = Localizer(lidar_map, FakeSession(desc), OracleHead(MC), MC, _cfg(top_k=3, max_points=10**6))
    res = pooled.localize(seq.image(FRAME), seq.calib.camera)
    assert len(np.unique(res.matched_points, axis=0)) == len(res.matched_points)


def test_localizer_keeps_each_retrieved_viewpoints_view_for_later_frames(scene):
    """What a retrieved submap's viewpoint sees (IPR there) and its points' viewpoint prior do not depend on the
    image: a second frame retrieving the same submaps reads none of them from the map again and gives the same
    result, the soft prior handed to matching is where each point's own submap viewpoint projects it (the first
    retrieved view that holds the point), a new camera makes new views, the cache keeps ``viewpoint_cache`` views
    (least recently used out), and 0 turns it off with the same results."""
    from ep2p_loc_ros.map import nearest_submaps

    seq, lidar_map = scene
    T_gt = seq.T_world_cam(FRAME)
    true_id = int(nearest_submaps(lidar_map, T_gt, 1)[0][0])
    desc = np.zeros(MC.global_dim, np.float32)
    desc[true_id] = 1.0
    image, camera = seq.image(FRAME), seq.calib.camera
    reads: list[int] = []
    priors: list[tuple[np.ndarray, np.ndarray, torch.Tensor]] = []

    def localizer(**cfg) -> Localizer:
        loc = _localizer(lidar_map, desc, top_k=3, **cfg)
        gather, match = loc.map.submap, loc._matches

        def counted(i, features=True):
            reads.append(int(i))
            return gather(i, features=features)

        def spied(pts, feats, *args):
            priors.append((pts, args[5], args[7]))  # expected, sigma
            return match(pts, feats, *args)

        proxy = {"__getattr__": lambda _, k: getattr(lidar_map, k), "submap": staticmethod(counted)}
        loc.map = type("CountedMap", (), proxy)()
        loc._matches = spied
        return loc

    loc = localizer(viewpoint_cache=3)
    first = loc.localize(image, camera)
    assert first.ok, first.message
    assert sorted(reads) == sorted(first.retrieved) and len(reads) == 3
    reads.clear()
    again = loc.localize(image, camera)
    assert reads == []  # every view came from the cache
    np.testing.assert_array_equal(again.T_map_cam, first.T_map_cam)
    np.testing.assert_array_equal(again.matched_points, first.matched_points)
    # the prior of each matched point: where the first retrieved viewpoint whose view holds it projects it
    _, cam_net = prepare_image(image, camera, MC)
    pts, expected, sigma = priors[-1]
    owner = np.full(len(pts), -1)
    for k, sid in enumerate(first.retrieved):
        view = next(v for key, v in loc._views.items() if key[0] == sid)
        rows = {tuple(p) for p in view.pts}
        mine = np.array([owner[i] < 0 and tuple(p) in rows for i, p in enumerate(pts)], bool)
        owner[mine] = k
        in_vp = transform_points(invert(lidar_map.T_map_viewpoint[sid]), pts[mine])
        np.testing.assert_allclose(expected[mine], cam_net.project(in_vp).uv, rtol=1e-5, atol=1e-3)
    assert (owner >= 0).all() and len(set(owner.tolist())) > 1 and sigma.shape == (len(pts), 2, 2)
    # another camera (intrinsics scaled by 0.9): new views
    other = type(camera)(camera.width, camera.height, camera.K * np.diag([0.9, 0.9, 1.0]), camera.dist)
    reads.clear()
    loc.localize(image, other)
    assert sorted(reads) == sorted(first.retrieved)
    assert len(loc._views) == 3  # the cache's size: the first camera's views went out, least recent first
    assert {key[0] for key in loc._views} == set(first.retrieved)
    # off: every frame reads its submaps, the results are the same
    reads.clear()
    off = localizer(viewpoint_cache=0)
    for _ in range(2):
        res = off.localize(image, camera)
        np.testing.assert_array_equal(res.T_map_cam, first.T_map_cam)
    assert len(reads) == 6 and len(off._views) == 0
    with pytest.raises(DataError, match="viewpoint_cache"):
        LocalizerConfig.from_dict({"viewpoint_cache": -1})


def test_localizer_tracking_searches_only_near_the_prior(scene):
    """A prior 15 m off: PnP's search region around it (``prior_search_distance_m``) decides whether the true
    pose can be found from it."""
    seq, lidar_map = scene
    T_gt = seq.T_world_cam(FRAME)
    prior = T_gt.copy()
    prior[:3, 3] += T_gt[:3, :3] @ [0.0, 0.0, 15.0]  # 15 m ahead along the optical axis
    wrong = np.zeros(MC.global_dim, np.float32)
    kw = {"guided_rounds": 0, "prior_radius_px": 0.0, "max_prior_distance": 100.0}
    near = _localizer(lidar_map, wrong, prior_search_distance_m=3.0, **kw)
    res = near.localize(seq.image(FRAME), seq.calib.camera, prior)
    assert not res.ok and "within the search bounds" in res.message
    wide = _localizer(lidar_map, wrong, prior_search_distance_m=20.0, **kw)
    res = wide.localize(seq.image(FRAME), seq.calib.camera, prior)
    assert res.ok, res.message
    assert _errors(res.T_map_cam, T_gt)[0] < 0.02


def test_localizer_config_refuses_a_bad_tracking_search():
    for bad in ({"prior_search_distance_m": 0.0}, {"prior_search_yaw_deg": -1.0}, {"prior_search_score": "most"}):
        with pytest.raises(DataError, match="config"):
            LocalizerConfig.from_dict(bad)
    assert LocalizerConfig().prior_pnp().search_max_distance_m == LocalizerConfig().prior_search_distance_m


def test_localizer_refines_only_the_matches_near_the_coarse_pose_then_polishes_it(scene):
    """PnP first runs on patch centres; only the matches that pose reprojects within ``refine_radius_px`` get
    the pixel MLP, and LM from the coarse pose on the refined pixels gives the exact pose. Here the head's
    "refinement" decodes the true pixel, and every third match is sent to a wrong patch far away."""
    from ep2p_loc_ros.model.heads import patch_centers, patch_index

    seq, lidar_map = scene
    T_gt = seq.T_world_cam(FRAME)
    refined_rows = []

    class CoarseOracle(OracleHead):
        def match(self, point_features, patch_features, *limits, refine=True, **guide):
            idx, px, conf = super().match(point_features, patch_features, *limits, **guide)
            wrong = torch.arange(len(idx)) % 3 == 0
            px[wrong] = (px[wrong] + torch.tensor([37.0 * 8, 11.0 * 8])) % torch.tensor([640.0, 192.0])
            return idx, px if refine else patch_centers(self.config)[patch_index(px, self.config)], conf

        def refine_pixels(self, point_features, patch_features, pixels):
            refined_rows.append(len(pixels))
            _, exact, _ = OracleHead.match(self, point_features, patch_features)
            return exact

    desc = np.zeros(MC.global_dim, np.float32)
    for lazy in (True, False):
        refined_rows.clear()
        cfg = _cfg(top_k=1, refine_after_pnp=lazy, max_matches_per_patch=0, max_matches=1500)
        res = Localizer(lidar_map, FakeSession(desc), CoarseOracle(MC), MC, cfg).localize(
            seq.image(FRAME), seq.calib.camera, T_gt
        )
        assert res.ok, res.message
        assert _errors(res.T_map_cam, T_gt)[0] < 0.02  # the exact pixels where it counts, either way
        if lazy:
            assert len(refined_rows) == 1 and 0.5 * res.num_matches < refined_rows[0] < 0.75 * res.num_matches
            assert res.num_inliers <= refined_rows[0]
        else:
            assert refined_rows == []  # every match refined inside match()


def test_localizer_config_refuses_a_non_positive_refine_radius_and_a_negative_prior_sigma():
    with pytest.raises(DataError, match="refine_radius_px"):
        LocalizerConfig.from_dict({"refine_radius_px": 0.0})
    for key in ("prior_sigma_m", "prior_sigma_deg", *LocalizerConfig().viewpoint_sigmas()):
        with pytest.raises(DataError, match=key):
            LocalizerConfig.from_dict({key: -1.0})
        with pytest.raises(DataError, match=key):
            LocalizerConfig.from_dict({key: float("nan")})
    assert LocalizerConfig.from_dict({"prior_sigma_m": 0.0, "prior_sigma_deg": 0.0}).prior_sigma_m == 0.0


def test_localizer_viewpoint_prior_rejects_look_alike_patches_after_retrieval(scene):
    """The mirror map of :func:`_mirror_map`, localized globally, its viewpoint moved 2.5 m ahead of the camera
    along the path. Without a prior the mirror wins; with the default viewpoint prior (long along each point's
    ray from the image centre, narrow across it) the true patches win and the pose is right. A round prior as
    wide as the forward offset lets the mirror win again."""
    from ep2p_loc_ros.map import nearest_submaps

    seq, _ = scene
    lidar_map, codes = _mirror_map(seq)
    T_gt = seq.T_world_cam(FRAME)
    sid, _ = nearest_submaps(lidar_map, T_gt, 1)
    ahead = np.eye(4)
    ahead[2, 3] = 2.5  # along the viewpoint camera's optical axis
    lidar_map.T_map_viewpoint[int(sid[0])] = lidar_map.T_map_viewpoint[int(sid[0])] @ ahead
    session = CodedSession(codes)
    session.descriptor = np.eye(MC.global_dim, dtype=np.float32)[int(sid[0]) % MC.global_dim]
    off = {k: 0.0 for k in LocalizerConfig().viewpoint_sigmas()}

    def run(**cfg):
        loc = Localizer(lidar_map, session, MatchingHead(MC), MC, _cfg(refine_pixels=False, top_k=1, **cfg))
        return loc.localize(seq.image(FRAME), seq.calib.camera)

    without = run(**off)
    assert not without.ok or _errors(without.T_map_cam, T_gt)[0] > 2.0
    with_prior = run()
    assert with_prior.ok, with_prior.message
    assert with_prior.submap_id == int(sid[0])
    t_err, r_err = _errors(with_prior.T_map_cam, T_gt)
    assert t_err < 0.3 and r_err < 1.0, (t_err, r_err)


def test_localizer_viewpoint_prior_widens_along_the_axis_by_the_maps_submap_spacing(scene):
    """The forward spread of the viewpoint prior is ``viewpoint_sigma_forward_m`` and
    ``viewpoint_sigma_forward_spacings`` submap spacings in quadrature; the spacing is measured from the map's
    viewpoints (median nearest-neighbour distance: the builder's path spacing on a straight drive)."""
    from ep2p_loc_ros.localizer import prior_cov_px, viewpoint_spacing

    seq, lidar_map = scene
    centres = np.asarray(lidar_map.T_map_viewpoint)[:, :3, 3]
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=2) + np.eye(len(centres)) * 1e9
    assert viewpoint_spacing(lidar_map.T_map_viewpoint) == pytest.approx(np.median(gaps.min(1)))
    assert 4.0 <= viewpoint_spacing(lidar_map.T_map_viewpoint) < 6.0  # spacing 4 m, viewpoints are frames 5 m apart
    assert viewpoint_spacing(lidar_map.T_map_viewpoint[:1]) == 0.0
    _, cam_net = prepare_image(seq.image(FRAME), seq.calib.camera, MC)
    T_vp = np.asarray(lidar_map.T_map_viewpoint[0], dtype=np.float64)
    pts = transform_points(T_vp, np.array([[3.0, 1.0, 12.0], [-6.0, 0.5, 25.0], [1.0, -1.0, 6.0]]))
    for spacings in (0.0, 1.0, 2.5):
        loc = _localizer(lidar_map, np.zeros(MC.global_dim, np.float32), viewpoint_sigma_forward_spacings=spacings)
        _, cov = loc._viewpoint_prior(T_vp, pts, cam_net)
        forward = np.hypot(3.0, spacings * loc.viewpoint_spacing)
        want = prior_cov_px(transform_points(invert(T_vp), pts), cam_net, (0.5, 0.2, forward), (0.0, 2.0, 0.0))
        np.testing.assert_allclose(cov, want, rtol=1e-6)
    with pytest.raises(DataError, match="viewpoint_sigma_forward_spacings"):
        LocalizerConfig.from_dict({"viewpoint_sigma_forward_spacings": -0.5})


def test_prior_cov_px_is_the_first_order_spread_of_the_projections():
    """Monte Carlo: cameras drawn around the guess with the given spreads project points with the covariance
    ``prior_cov_px`` predicts (small spreads: first order holds). A forward spread alone moves each point along
    its ray from the principal point: the covariance is a line along that ray."""
    from ep2p_loc_ros.calib import PinholeCamera
    from ep2p_loc_ros.geometry import rotvec_to_matrix
    from ep2p_loc_ros.localizer import prior_cov_px

    cam = PinholeCamera(384, 128, np.array([[180.0, 0.0, 192.0], [0.0, 170.0, 64.0], [0.0, 0.0, 1.0]]))
    rng = np.random.default_rng(1)
    pts = np.array([[-6.0, 1.5, 12.0], [4.0, -2.0, 8.0], [0.5, 0.2, 40.0], [9.0, 1.0, 15.0]])
    s_xyz, s_rot = np.array([0.05, 0.02, 0.3]), np.array([0.1, 0.3, 0.2])
    n = 20000
    t = rng.normal(size=(n, 3)) * s_xyz
    w = np.radians(rng.normal(size=(n, 3)) * s_rot)
    uv = np.empty((n, len(pts), 2))
    for i in range(n):  # the true camera: the guess turned by w and moved by t (both in the guess frame)
        R = rotvec_to_matrix(w[i])
        uv[i] = cam.project((pts - t[i]) @ R).uv
    empirical = np.einsum("nmi,nmj->mij", uv - uv.mean(0), uv - uv.mean(0)) / n
    predicted = prior_cov_px(pts, cam, s_xyz, s_rot)
    np.testing.assert_allclose(predicted, empirical, rtol=0.08, atol=0.02)
    line = prior_cov_px(pts, cam, (0.0, 0.0, 2.0), (0.0, 0.0, 0.0))
    vals, vecs = np.linalg.eigh(line)
    ray = cam.project(pts).uv - cam.K[:2, 2]
    ray /= np.linalg.norm(ray, axis=1, keepdims=True)
    assert (vals[:, 0] < 1e-6 * vals[:, 1]).all()
    np.testing.assert_allclose(np.abs((vecs[:, :, 1] * ray).sum(1)), 1.0, atol=1e-6)
    # r / z pixels per metre along the ray (r: the pixel's distance from the principal point, z: the depth)
    np.testing.assert_allclose(
        np.sqrt(vals[:, 1]), 2.0 * np.linalg.norm(cam.project(pts).uv - cam.K[:2, 2], axis=1) / pts[:, 2], rtol=1e-5
    )


def test_localizer_aligns_a_global_pose_off_along_its_axis_to_the_maps_reflectance(scene, caplog):
    """The oracle's matches here are where a camera 3 m ahead would see each point (the learned matcher's typical
    error after retrieval): PnP finds that camera, and the reflectance alignment brings it back to the true one."""
    from ep2p_loc_ros.geometry import make_T
    from ep2p_loc_ros.map import nearest_submaps
    from ep2p_loc_ros.reflectance_alignment import AlignmentConfig, reflectance_contrast

    seq, _ = scene
    T_gt = seq.T_world_cam(FRAME)
    T_ahead = T_gt @ make_T(np.eye(3), np.array([0.0, 0.0, 3.0]))
    image = seq.image(FRAME)
    _, cam_net = prepare_image(image, seq.calib.camera, MC)

    def feature_fn(sub):
        desc = np.zeros(MC.global_dim, np.float32)
        desc[sub.id % MC.global_dim] = 1.0
        return _encode_pixels(sub.points, invert(T_ahead), cam_net), desc

    lidar_map = build_map(seq, MapBuildParams(spacing=4.0, radius=40.0), feature_fn, progress=False)
    sid = int(np.argmin(np.linalg.norm(lidar_map.viewpoint_positions - T_gt[:3, 3], axis=1)))
    desc = lidar_map.descriptors[sid]
    plain = _localizer(lidar_map, desc).localize(image, seq.calib.camera)
    assert plain.ok and "alignment" not in plain.timings_ms and not plain.aligned
    assert _errors(plain.T_map_cam, T_ahead)[0] < 0.05  # PnP finds the camera the matches describe
    only_global = AlignmentConfig(after_retrieval=True, in_tracking=False)
    aligned = _localizer(lidar_map, desc, alignment=only_global).localize(image, seq.calib.camera)
    assert aligned.ok and aligned.timings_ms["alignment"] > 0 and aligned.aligned
    t_err, r_err = _errors(aligned.T_map_cam, T_gt)
    assert t_err < 0.5 and r_err < 1.0, (t_err, r_err)
    # the scene is an outdoor synthetic drive, and its map says so: levels, no local contrast computed
    assert lidar_map.params["environment"] == "outdoor"
    outdoor = _localizer(lidar_map, desc, alignment=only_global)
    assert outdoor.localize(image, seq.calib.camera).aligned and not outdoor._contrast
    assert outdoor.alignment_mode == "levels"
    # single images get pose hypotheses on outdoor and indoor maps (alignment.hypothesis_environments); maps that do
    # not say where they are keep the single alignment
    assert outdoor.single_image_hypotheses
    for environment, on in (("indoor", True), ("unknown", False)):
        elsewhere = replace(lidar_map, params={**lidar_map.params, "environment": environment})
        assert _localizer(elsewhere, desc, alignment=only_global).single_image_hypotheses is on, environment
    everywhere = replace(only_global, hypothesis_environments=["outdoor", "indoor", "unknown"])
    assert _localizer(
        replace(lidar_map, params={**lidar_map.params, "environment": "unknown"}), desc, alignment=everywhere
    ).single_image_hypotheses
    # the contrast environments (indoors) have their own gate: every frame, while outdoors may take fewer
    gated = replace(only_global, hypotheses_below_support=0.06)
    assert gated.for_frame("indoor", tracking=False)[0].hypotheses_below_support == 1.0
    assert gated.for_frame("outdoor", tracking=False)[0].hypotheses_below_support == 0.06
    # ... and their own points' weight in the choice (off indoors)
    assert only_global.for_frame("indoor", tracking=False)[0].points_weight == 0.0
    assert only_global.for_frame("outdoor", tracking=False)[0].points_weight == 0.3
    assert not _localizer(
        lidar_map, desc, alignment=replace(only_global, retrieved_starts=False)
    ).single_image_hypotheses
    # on a map built as indoor it compares local contrast (alignment.contrast_environments), the submap's kept for
    # the next frame; the alignment is off on environments the config leaves out (alignment.environments)
    indoor_map = replace(lidar_map, params={**lidar_map.params, "environment": "indoor"})
    with caplog.at_level(logging.INFO, logger="ep2p_loc_ros.localizer"):  # (one alignment: no hypotheses)
        inside = _localizer(indoor_map, desc, alignment=replace(only_global, retrieved_starts=False))
    assert "reflectance alignment by local contrast: the map is indoor" in caplog.text
    assert inside.alignment_mode == "local contrast"
    indoor = inside.localize(image, seq.calib.camera)
    assert indoor.ok and indoor.aligned and indoor.timings_ms["alignment"] > 0
    assert list(inside._contrast) == [(int(nearest_submaps(indoor_map, T_ahead, 1)[0][0]), 8)]  # PnP pose's
    inside.CONTRAST_CACHE = 2  # the least recently used submap's contrast goes first
    for sid in range(3):
        sub = indoor_map.submap(sid, features=False)
        got = inside._reflectance_contrast(sid, sub)
        np.testing.assert_array_equal(got, reflectance_contrast(sub.points, sub.reflectance, 8))
    assert list(inside._contrast) == [(1, 8), (2, 8)]
    not_inside = replace(only_global, environments=["outdoor", "unknown"])  # a list, as from YAML
    off_here = _localizer(indoor_map, desc, alignment=not_inside)
    assert off_here.alignment_mode == "off"
    off = off_here.localize(image, seq.calib.camera)
    assert off.ok and not off.aligned and "alignment" not in off.timings_ms
    # a pose tracked from a prior is aligned only with in_tracking (its search along the axis is shorter)
    tracked = _localizer(lidar_map, desc, alignment=only_global).localize(image, seq.calib.camera, T_ahead)
    assert tracked.ok and "alignment" not in tracked.timings_ms
    assert _errors(tracked.T_map_cam, T_ahead)[0] < 0.05
    for reach, near in ((2.0, False), (4.0, True)):  # 3 m off: out of the default 2 m reach, within 4 m
        both = AlignmentConfig(after_retrieval=True, in_tracking=True, tracking_forward_range_m=reach)
        tracked = _localizer(lidar_map, desc, alignment=both).localize(image, seq.calib.camera, T_ahead)
        assert tracked.ok and tracked.timings_ms["alignment"] > 0
        assert (_errors(tracked.T_map_cam, T_gt)[0] < 0.5) is near, reach
    # PnP moves a prior 1.5 m ahead to the camera its matches describe (3 m ahead): with a short search the alignment
    # from PnP's pose stays metres off; aligned from the prior too (tracking_from_prior), the better score wins
    T_prior = T_gt @ make_T(np.eye(3), np.array([0.0, 0.0, 1.5]))
    short = AlignmentConfig(in_tracking=True, tracking_forward_range_m=1.0, tracking_refine_rounds=0)
    for from_prior, near in ((False, False), (True, True)):
        cfg = replace(short, tracking_from_prior=from_prior)
        tracked = _localizer(lidar_map, desc, alignment=cfg).localize(image, seq.calib.camera, T_prior)
        assert tracked.ok and tracked.aligned
        assert (_errors(tracked.T_map_cam, T_gt)[0] < 0.5) is near, (from_prior, _errors(tracked.T_map_cam, T_gt))


def test_the_pixel_polish_before_a_global_alignment_is_a_switch(scene):
    """``refine_before_global_alignment`` off: after retrieval, the alignment starts from PnP's pose on patch
    centres (the pixel MLP and the LM polish skipped); tracking, and maps where the alignment is off, still polish."""
    from ep2p_loc_ros.reflectance_alignment import AlignmentConfig

    seq, lidar_map = scene
    image, camera = seq.image(FRAME), seq.calib.camera
    T_gt = seq.T_world_cam(FRAME)
    sid = int(np.argmin(np.linalg.norm(lidar_map.viewpoint_positions - T_gt[:3, 3], axis=1)))
    desc = lidar_map.descriptors[sid]
    indoor_map = replace(lidar_map, params={**lidar_map.params, "environment": "indoor"})
    not_indoors = AlignmentConfig(environments=("outdoor", "unknown"))
    calls = []
    for refine, the_map, prior in (
        (True, lidar_map, None),
        (False, lidar_map, None),
        (False, indoor_map, None),
        (False, lidar_map, T_gt),
    ):
        loc = _localizer(the_map, desc, alignment=not_indoors, refine_before_global_alignment=refine)
        polish, count = loc._polish, []
        loc._polish = lambda *a, polish=polish, count=count: (count.append(1), polish(*a))[1]
        res = loc.localize(image, camera, prior)
        assert res.ok, res.message
        assert res.aligned is (the_map is lidar_map)
        assert _errors(res.T_map_cam, T_gt)[0] < 0.5
        calls.append(len(count))
    assert calls == [1, 0, 1, 1]


# Patch codes for the patch likelihood (:class:`CodedSession`): a random unit code per patch in the dimensions the
# oracle leaves free; a point's features carry the code of the patch the true camera sees it in.
_CODES = np.random.default_rng(5).normal(size=(MC.num_patches, MC.feature_dim))
_CODES[:, :5] = 0.0
_CODES = (_CODES / np.linalg.norm(_CODES, axis=1, keepdims=True)).astype(np.float32)


def _split_map(scene, truth_share: float):
    """A map whose oracle matches are split: ``truth_share`` of them describe the true camera, the rest a camera 8 m
    behind it. Every point also carries the code of the patch the true camera sees it in (``_CODES``). Returns the
    sequence, the map, the true pose, the descriptor that retrieves the two submaps nearest either camera (top_k 2)
    and their ids."""
    from ep2p_loc_ros.geometry import make_T
    from ep2p_loc_ros.map import nearest_submaps
    from ep2p_loc_ros.model.heads import patch_index

    seq, _ = scene
    T_gt = seq.T_world_cam(FRAME)
    T_behind = T_gt @ make_T(np.eye(3), np.array([0.0, 0.0, -8.0]))
    _, cam_net = prepare_image(seq.image(FRAME), seq.calib.camera, MC)

    def feature_fn(sub):
        desc = np.zeros(MC.global_dim, np.float32)
        desc[sub.id % MC.global_dim] = 1.0
        truth = np.random.default_rng(sub.id).random(len(sub.points)) < truth_share
        f_gt = _encode_pixels(sub.points, invert(T_gt), cam_net)
        f = np.where(truth[:, None], f_gt, _encode_pixels(sub.points, invert(T_behind), cam_net))
        seen = f_gt[:, 0] > 0.5
        px = torch.from_numpy((f_gt[seen][:, [1, 3]] * 1024 + f_gt[seen][:, [2, 4]]).astype(np.float32))
        f[seen, 5:] = _CODES[patch_index(px, MC).numpy(), 5:]
        return f, desc

    lidar_map = build_map(seq, MapBuildParams(spacing=4.0, radius=40.0), feature_fn, progress=False)
    ids = {int(nearest_submaps(lidar_map, T, 1)[0][0]) for T in (T_gt, T_behind)}
    assert len(ids) == 2
    return seq, lidar_map, T_gt, lidar_map.descriptors[sorted(ids)].sum(0), ids


@pytest.fixture(scope="module")
def split_scene(scene):
    """:func:`_split_map` with 30 % of the matches describing the true camera."""
    return _split_map(scene, 0.3)


def test_a_single_image_is_aligned_from_each_retrieved_viewpoint_and_the_best_supported_pose_wins(split_scene):
    """``alignment.retrieved_starts``: 70 % of the oracle's matches describe a camera 8 m behind the true one, 30 %
    the true one. PnP follows the majority, and from there a 3 m search along the axis cannot reach the true
    camera. Aligned from the retrieved viewpoints too, the true camera's pose wins: its matches' support is under half
    the other's, but only there does the reflectance fit. (The session's patch features are zeros: the patch
    likelihood is 0 everywhere here.)"""
    from ep2p_loc_ros.reflectance_alignment import AlignmentConfig

    seq, lidar_map, T_gt, desc, ids = split_scene
    image = seq.image(FRAME)
    short = AlignmentConfig(forward_range_m=3.0, hypotheses_below_support=1.0)  # on every frame (gated below)
    runs = {}
    for starts in (False, True):
        cfg = replace(short, retrieved_starts=starts)
        loc = _localizer(lidar_map, desc, top_k=2, alignment=cfg)
        res = loc.localize(image, seq.calib.camera)
        assert res.ok and res.aligned and set(res.retrieved) == ids, res.message
        runs[starts] = _errors(res.T_map_cam, T_gt)
    assert runs[False][0] > 4.0, runs  # PnP's pose, 8 m behind: out of the search's reach
    assert runs[True][0] < 0.5 and runs[True][1] < 1.0, runs
    # hypotheses_below_support: the other hypotheses only when PnP's aligned pose has less than that share of the
    # matches' support; here it has 10-20 % (the alignment moved it 2.5 m from the camera the 70 % describe)
    for share, near in ((0.05, False), (0.5, True)):
        cfg = replace(short, retrieved_starts=True, hypotheses_below_support=share)
        res = _localizer(lidar_map, desc, top_k=2, alignment=cfg).localize(image, seq.calib.camera)
        assert res.ok and res.aligned
        assert (_errors(res.T_map_cam, T_gt)[0] < 0.5) is near, (share, _errors(res.T_map_cam, T_gt))


def test_the_best_coarse_hypotheses_are_finished_and_the_best_finished_one_wins(split_scene):
    """``alignment.hypothesis_finish``: the best n coarse hypotheses each get the fine steps and the refine round from
    where they ended (side by side), and the best of the finished poses by the same rule wins; 1 finishes the best
    coarse one alone. Here every count ends at the true camera, and n finishes run (no more than the hypotheses)."""
    from ep2p_loc_ros.reflectance_alignment import AlignmentConfig

    seq, lidar_map, T_gt, desc, ids = split_scene
    finishes = {}
    for n in (1, 2, 10):
        cfg = AlignmentConfig(forward_range_m=3.0, hypotheses_below_support=1.0, hypothesis_finish=n)
        loc = _localizer(lidar_map, desc, top_k=2, alignment=cfg)
        calls, run = [], loc._align_on
        loc._align_on = lambda T, *a, run=run, calls=calls, **k: (calls.append((T, a[2])), run(T, *a, **k))[1]
        res = loc.localize(seq.image(FRAME), seq.calib.camera)
        assert res.ok and res.aligned and set(res.retrieved) == ids, res.message
        assert _errors(res.T_map_cam, T_gt)[0] < 0.5, (n, _errors(res.T_map_cam, T_gt))
        coarse = [T for T, c in calls if c.forward_range_m > 0]
        finishes[n] = [T for T, c in calls if c.forward_range_m == 0]
        assert len(finishes[n]) == min(n, len(coarse)) and len(coarse) >= 3, (n, len(coarse))
        assert len({T.tobytes() for T in finishes[n]}) == len(finishes[n])  # each from its own coarse end
        loc.close()
    np.testing.assert_array_equal(finishes[1][0], finishes[2][0])  # the best coarse one is finished first
    # points_weight reaches the choice with each coarse end's points
    import ep2p_loc_ros.localizer as localizer_module

    seen, rank = [], localizer_module.rank_hypotheses
    cfg = AlignmentConfig(forward_range_m=3.0, hypotheses_below_support=1.0, points_weight=0.5)
    loc = _localizer(lidar_map, desc, top_k=2, alignment=cfg)
    ends, run = [], loc._align_on
    loc._align_on = lambda T, *a, run=run, ends=ends, **k: (lambda r: (ends.append((a[2].forward_range_m, r)), r)[1])(
        run(T, *a, **k)
    )
    try:
        localizer_module.rank_hypotheses = lambda *a: (seen.append(a), rank(*a))[1]
        assert loc.localize(seq.image(FRAME), seq.calib.camera).ok
    finally:
        localizer_module.rank_hypotheses = rank
        loc.close()
    coarse = [r for reach, r in ends if reach > 0 and r.ok]
    coarse_points = sorted(r.points for r in coarse)  # (threads: in any order)
    assert seen and seen[0][6] == 0.5 and sorted(seen[0][5]) == coarse_points
    # ... and agreement_weight with how many other coarse ends each one's is near
    agree = pose_agreement([r.T_map_cam for r in coarse], cfg.agreement_radius_m, cfg.agreement_deg)
    assert seen[0][8] == cfg.agreement_weight > 0 and sorted(seen[0][7]) == sorted(agree)
    # ... and near_weight with each coarse end's score over its near points (finite here: the scene is a street)
    # (one score per depth of near_m, a row a pose) and halves_weight with the scores left and right of each axis
    near, halves = np.asarray(seen[0][9]), np.asarray(seen[0][11])
    assert seen[0][10] == cfg.near_weight > 0 and near.shape == (len(coarse), len(cfg.near_m)) == (len(coarse), 2)
    assert seen[0][12] == cfg.halves_weight > 0 and halves.shape == (len(coarse), 2)
    assert np.isfinite(near).all() and not np.allclose(near[:, 0], near[:, 1])
    assert np.isfinite(halves).all() and not np.allclose(halves[:, 0], halves[:, 1])
    for part in (near[:, 0], halves[:, 0], halves[:, 1]):  # (not the score over every point again)
        assert not np.allclose(np.sort(part), np.sort(seen[0][0]))


class _FixedConfidence:
    """Stands in for ``models/confidence.json``'s fit: every pose gets the same confidence (the gate under test)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def confidence(self, mode, environment, signals) -> float:
        return self.value


class _FirstThen(_FixedConfidence):
    """The first pose rated (the one the rescue's gate rates) gets ``value``, every later one ``then``."""

    def __init__(self, value: float, then: float) -> None:
        super().__init__(value)
        self.then, self.calls = then, 0

    def confidence(self, mode, environment, signals) -> float:
        self.calls += 1
        return self.value if self.calls == 1 else self.then


@pytest.fixture(scope="module")
def turned_scene(scene):
    """The camera at a corner: every submap viewpoint and 60 % of the oracle's matches face 20 deg away from the
    true camera (turned about its vertical), 40 % describe the true camera; every point carries the code of the
    patch the true camera sees it in (``_CODES``, for :class:`CodedSession`). Returns the sequence, the map, the true
    pose, the descriptor that retrieves the submap nearest it (top_k 1) and that submap's id."""
    from ep2p_loc_ros.map import nearest_submaps
    from ep2p_loc_ros.model.heads import patch_index
    from ep2p_loc_ros.pose_hypotheses import turned_poses

    seq, _ = scene
    T_gt = seq.T_world_cam(FRAME)
    T_away = turned_poses(T_gt, (20.0,))[1]
    _, cam_net = prepare_image(seq.image(FRAME), seq.calib.camera, MC)

    def feature_fn(sub):
        desc = np.zeros(MC.global_dim, np.float32)
        desc[sub.id % MC.global_dim] = 1.0
        truth = np.random.default_rng(sub.id).random(len(sub.points)) < 0.4
        f_gt = _encode_pixels(sub.points, invert(T_gt), cam_net)
        f = np.where(truth[:, None], f_gt, _encode_pixels(sub.points, invert(T_away), cam_net))
        seen = f_gt[:, 0] > 0.5  # every point also carries the code of the patch the true camera sees it in
        px = torch.from_numpy((f_gt[seen][:, [1, 3]] * 1024 + f_gt[seen][:, [2, 4]]).astype(np.float32))
        f[seen, 5:] = _CODES[patch_index(px, MC).numpy(), 5:]
        return f, desc

    lidar_map = build_map(seq, MapBuildParams(spacing=4.0, radius=40.0), feature_fn, progress=False)
    lidar_map.T_map_viewpoint = np.array([turned_poses(T, (20.0,))[1] for T in lidar_map.T_map_viewpoint])
    sid = int(nearest_submaps(lidar_map, T_gt, 1)[0][0])
    return seq, lidar_map, T_gt, lidar_map.descriptors[sid], sid


def test_an_unlikely_single_image_pose_is_chosen_again_with_pnps_pose_and_the_best_viewpoint_turned(turned_scene):
    """``alignment.turned_starts_deg``: PnP follows the matches' majority and every viewpoint faces 20 deg away from
    the camera, out of the ascent's reach, so no hypothesis is right. When the chosen pose's confidence is below
    ``turned_below_confidence``, PnP's pose and the best retrieved viewpoint turned by -20 and +20 deg are starts too,
    and the true camera's pose wins the choice made again (the reflectance fits only there). A likely pose, no angles
    or no confidence to tell: no turned starts, the pose as before."""
    from ep2p_loc_ros.geometry import rotvec_to_matrix
    from ep2p_loc_ros.reflectance_alignment import AlignmentConfig

    seq, lidar_map, T_gt, desc, sid = turned_scene
    image = seq.image(FRAME)
    errors, coarse_starts = {}, {}
    for name, angles, confidence in (
        ("turned", (20.0,), 0.1),
        ("likely", (20.0,), 0.9),
        ("no angles", (), 0.1),
        ("no fit", (20.0,), math.nan),  # (a confidence.json without a fit for the map's environment)
        ("no model", (20.0,), None),
    ):
        cfg = AlignmentConfig(
            forward_range_m=3.0, turned_starts_deg=angles, turned_views=1, likelihood_starts=0, manhattan_starts_m=()
        )
        loc = _localizer(lidar_map, desc, top_k=1, alignment=cfg)
        loc.confidence_model = None if confidence is None else _FixedConfidence(confidence)
        starts, run = [], loc._align_on
        loc._align_on = lambda T, *a, run=run, starts=starts, **k: (starts.append((T, a[2])), run(T, *a, **k))[1]
        res = loc.localize(image, seq.calib.camera)
        loc.close()
        assert res.ok and res.aligned, (name, res.message)
        errors[name] = _errors(res.T_map_cam, T_gt)
        coarse_starts[name] = [T for T, c in starts if c.forward_range_m > 0]
    assert errors["turned"][0] < 0.5 and errors["turned"][1] < 1.0, errors
    for name in ("likely", "no angles", "no fit", "no model"):
        assert errors[name][1] > 10.0, errors  # every hypothesis kept the matches' or a viewpoint's heading
        assert len(coarse_starts[name]) == len(coarse_starts["likely"]), coarse_starts
    # the turned run aligned four starts more: PnP's pose (its first start) and the retrieved viewpoint, each turned
    # by -20 and +20 deg about its camera's vertical, in place
    extra = coarse_starts["turned"][len(coarse_starts["likely"]) :]
    bases = [coarse_starts["turned"][0]] * 2 + [lidar_map.T_map_viewpoint[sid]] * 2
    assert len(extra) == 4
    for T, base, sign in zip(extra, bases, (-1, 1, -1, 1), strict=True):
        np.testing.assert_allclose(T[:3, 3], base[:3, 3])
        np.testing.assert_allclose(
            base[:3, :3].T @ T[:3, :3], rotvec_to_matrix([0.0, sign * math.radians(20.0), 0.0]), atol=1e-12
        )
    # Above, the patch features are zeros (the likelihood is the same everywhere). With patch features that name the
    # patches the true camera sees the points in, the turns whose patch likelihood is more than hypothesis_margin below
    # the best turn's are not aligned; the turn toward the true camera is, and wins.
    session = CodedSession(_CODES)
    session.descriptor = desc
    cfg = AlignmentConfig(
        forward_range_m=3.0, turned_starts_deg=(20.0,), turned_views=1, likelihood_starts=0, manhattan_starts_m=()
    )
    loc = Localizer(lidar_map, session, OracleHead(MC), MC, _cfg(top_k=1, alignment=cfg))
    loc.confidence_model = _FixedConfidence(0.1)
    starts, run = [], loc._align_on
    loc._align_on = lambda T, *a, run=run, **k: (starts.append((T, a[2])), run(T, *a, **k))[1]
    res = loc.localize(image, seq.calib.camera)
    loc.close()
    assert res.ok and _errors(res.T_map_cam, T_gt)[0] < 0.5 and _errors(res.T_map_cam, T_gt)[1] < 1.0
    coarse = [T for T, c in starts if c.forward_range_m > 0]
    bases = (coarse[0], lidar_map.T_map_viewpoint[sid])  # (PnP's pose, the viewpoint)
    kept = [T for T in coarse if any(_errors(T, b)[0] < 1e-9 and abs(_errors(T, b)[1] - 20.0) < 1e-6 for b in bases)]
    assert 1 <= len(kept) < 4, len(kept)
    assert min(_errors(T, T_gt)[1] for T in kept) < 1.0  # (PnP's pose turned back by 20 deg)


def _rescued(loc, seq, confidence: float | _FixedConfidence):
    """``loc``'s result for FRAME when its chosen pose gets ``confidence`` (or a stand-in fit's), and the poses its
    coarse hypotheses started from (in order)."""
    loc.confidence_model = confidence if isinstance(confidence, _FixedConfidence) else _FixedConfidence(confidence)
    starts, run = [], loc._align_on
    loc._align_on = lambda T, *a, run=run, **k: (starts.append((T, a[2])), run(T, *a, **k))[1]
    res = loc.localize(seq.image(FRAME), seq.calib.camera)
    loc.close()
    assert res.ok and res.aligned, res.message
    return res, [T for T, c in starts if c.forward_range_m > 0]


def _only_the_rescue_reaches(results, coarse_starts, rescued: str, T_gt: np.ndarray) -> list[np.ndarray]:
    """Asserts that the ``rescued`` run ends at the true camera and the "off" and "likely" ones keep the wrong heading
    with no start added; returns the ``rescued`` run's added starts."""
    dt, dr = _errors(results[rescued].T_map_cam, T_gt)
    assert dt < 0.5 and dr < 1.0, (dt, dr)
    for name in ("off", "likely"):
        assert _errors(results[name].T_map_cam, T_gt)[1] > 10.0, name
        assert len(coarse_starts[name]) == len(coarse_starts["off"])
    return coarse_starts[rescued][len(coarse_starts["off"]) :]


def test_an_unlikely_single_image_pose_is_chosen_again_with_starts_the_patch_likelihood_finds(turned_scene):
    """``alignment.likelihood_starts``: as above, no hypothesis is right (every start faces 20 deg away from the
    camera), and no turned starts are asked for. With patch features that name the patches the true camera sees the
    points in, the best poses by patch likelihood on the grid around PnP's pose and the retrieved viewpoint, climbed
    on it, reach the true camera; aligned as coarse hypotheses, the true pose wins the choice made again. Without
    them (0), or with a likely pose, the pose keeps the wrong heading and no start is added."""
    from ep2p_loc_ros.reflectance_alignment import AlignmentConfig

    seq, lidar_map, T_gt, desc, _ = turned_scene
    results, coarse_starts = {}, {}
    for name, count, confidence in (("search", 2, 0.1), ("off", 0, 0.1), ("likely", 2, 0.9)):
        session = CodedSession(_CODES)
        session.descriptor = desc
        cfg = AlignmentConfig(
            forward_range_m=3.0,
            turned_starts_deg=(),
            likelihood_starts=count,
            likelihood_views=1,
            manhattan_starts_m=(),
        )
        loc = Localizer(lidar_map, session, OracleHead(MC), MC, _cfg(top_k=1, alignment=cfg))
        results[name], coarse_starts[name] = _rescued(loc, seq, confidence)
    extra = _only_the_rescue_reaches(results, coarse_starts, "search", T_gt)
    assert 1 <= len(extra) <= 2
    assert min(_errors(T, T_gt)[1] for T in extra) < 2.0  # a start the alignment can climb to the truth from


def test_an_unlikely_single_image_pose_is_chosen_again_from_viewpoints_turned_along_the_image_lines(turned_scene):
    """``alignment.manhattan_starts_m``: as above, every start faces 20 deg away from the camera and no turned or
    likelihood starts are asked for. The street's facades meet at right angles: the image's horizontal lines and the
    walls the retrieved viewpoint sees give its turn toward the camera modulo 90 deg, and the viewpoint so turned (in
    place: a move of 0 m) is a start that wins the choice made again. Off, or with a likely pose: the wrong heading,
    and no start added."""
    from ep2p_loc_ros.reflectance_alignment import AlignmentConfig
    from ep2p_loc_ros.upright_ransac import yaw_about_camera_y

    seq, lidar_map, T_gt, desc, sid = turned_scene
    results, coarse_starts = {}, {}
    for name, moves, confidence in (("manhattan", (0.0,), 0.1), ("off", (), 0.1), ("likely", (0.0,), 0.9)):
        cfg = AlignmentConfig(
            forward_range_m=3.0, turned_starts_deg=(), likelihood_starts=0, manhattan_starts_m=moves, manhattan_views=1
        )
        results[name], coarse_starts[name] = _rescued(
            _localizer(lidar_map, desc, top_k=1, alignment=cfg), seq, confidence
        )
    extra = _only_the_rescue_reaches(results, coarse_starts, "manhattan", T_gt)
    # the viewpoint turned by -20 deg (toward the camera) and by +70 (the walls' other direction), in place
    viewpoint = lidar_map.T_map_viewpoint[sid]
    turns = sorted(math.degrees(yaw_about_camera_y(viewpoint[:3, :3], T[:3, :3])) for T in extra)
    assert len(extra) == 2 and turns == pytest.approx([-20.0, 70.0], abs=1.0), turns
    for T in extra:
        np.testing.assert_allclose(T[:3, 3], viewpoint[:3, 3])


def test_a_single_images_hypotheses_aligned_side_by_side_give_the_pose_aligned_one_after_another(split_scene):
    """``alignment.threads``: the hypotheses of a single image are aligned in a pool of threads (the searches are
    compiled and release the GIL). The pose, the score and the retrieved submaps are the same bit for bit as in one
    thread, frame after frame (the second frame takes each submap's prepared points from the cache)."""
    from ep2p_loc_ros.reflectance_alignment import AlignmentConfig

    seq, lidar_map, T_gt, desc, ids = split_scene
    image = seq.image(FRAME)
    runs = {}
    for threads in (1, 2):
        cfg = AlignmentConfig(forward_range_m=3.0, hypotheses_below_support=1.0, threads=threads)
        loc = _localizer(lidar_map, desc, top_k=2, alignment=cfg)
        runs[threads] = [loc.localize(image, seq.calib.camera) for _ in range(2)]
        assert (loc._pool is not None) is (threads == 2)
        assert len(loc._prepared_points) >= 2  # PnP's submap and the retrieved ones, kept for the next frame
    for one, two in zip(runs[1], runs[2], strict=True):
        assert one.ok and one.aligned and set(one.retrieved) == ids and _errors(one.T_map_cam, T_gt)[0] < 0.5
        np.testing.assert_array_equal(one.T_map_cam, two.T_map_cam)
        assert (one.alignment_score, one.retrieved) == (two.alignment_score, two.retrieved)
    np.testing.assert_array_equal(runs[2][0].T_map_cam, runs[2][1].T_map_cam)
    workers = [t for t in threading.enumerate() if t in loc._pool._threads]
    assert workers and all(t.name.startswith("ep2p-align") for t in workers)
    loc.close()  # (the node's cleanup): its threads stop, and a later frame makes them again
    assert loc._pool is None and not any(t.is_alive() for t in workers)
    np.testing.assert_array_equal(loc.localize(image, seq.calib.camera).T_map_cam, runs[2][0].T_map_cam)
    loc.close()


def test_the_patch_likelihood_chooses_the_place_the_matchers_distributions_describe(scene):
    """Every match describes a camera 8 m behind the true one, so that place has all the matches' support and wins
    the choice though the reflectance fits the true camera better. Every point's patch distribution describes the
    true camera (``_CODES``): with the patch likelihood weighed in, the true camera's pose wins. Checks the plumbing:
    the classified points, their features and the image's patch features reach :class:`PatchLikelihood`, and its
    vote reaches the choice."""
    from ep2p_loc_ros.reflectance_alignment import AlignmentConfig

    seq, lidar_map, T_gt, desc, ids = _split_map(scene, 0.0)
    errors, aligned = {}, {}
    for weight, margin, keep in ((0.0, math.inf, 1), (0.3, math.inf, 1), (0.3, 1.0, 0), (0.3, 1.0, 1), (0.3, 1.0, 5)):
        cfg = AlignmentConfig(
            forward_range_m=3.0,
            retrieved_starts=True,
            hypotheses_below_support=1.0,
            likelihood_weight=weight,
            hypothesis_margin=margin,
            hypothesis_keep_views=keep,
        )
        session = CodedSession(_CODES)
        session.descriptor = desc
        loc = Localizer(lidar_map, session, OracleHead(MC), MC, _cfg(top_k=2, alignment=cfg))
        starts, run = [], loc._align_on
        loc._align_on = lambda T, *a, run=run, starts=starts, **k: (starts.append(T), run(T, *a, **k))[1]
        res = loc.localize(seq.image(FRAME), seq.calib.camera)
        assert res.ok and res.aligned and set(res.retrieved) == ids, res.message
        errors[weight, margin, keep] = _errors(res.T_map_cam, T_gt)
        aligned[weight, margin, keep] = len(starts)
    assert errors[0.0, math.inf, 1][0] > 4.0, errors
    assert errors[0.3, math.inf, 1][0] < 0.5 and errors[0.3, math.inf, 1][1] < 1.0, errors
    # hypothesis_margin: of the five retrieved viewpoints (hypothesis_views), only those whose likelihood at the
    # start is near the best start's are aligned: the same pose from fewer alignments
    assert errors[0.3, 1.0, 0] == errors[0.3, math.inf, 1], errors
    views = min(5, len(lidar_map.T_map_viewpoint))
    assert 3 <= aligned[0.3, 1.0, 0] < aligned[0.3, math.inf, 1] == 2 + views, aligned  # PnP, the views, the finish
    # ... hypothesis_keep_views: the best retrieved ones are aligned whatever their likelihood (all five: every one)
    assert aligned[0.3, 1.0, 0] <= aligned[0.3, 1.0, 1] <= aligned[0.3, 1.0, 0] + 1, aligned
    assert aligned[0.3, 1.0, 5] == aligned[0.3, math.inf, 1], aligned


def test_the_choice_made_again_for_an_unlikely_pose_weighs_the_matches_support_by_the_rescues_weight(scene):
    """``alignment.rescue_support_weight``: every match describes a camera 8 m behind the true one, so with no patch
    likelihood weighed that place has all the support and wins the first choice, though the reflectance fits the true
    camera better (the test above). When the chosen pose is unlikely right the rescue's starts run and the choice is
    made again over all the hypotheses: weighing the support by 0 there, the true camera's pose wins; by the first
    choice's weight, or with a likely pose (no rescue), the pose behind stays. The pose the rescue chose is rated no
    higher than the one the gate doubted, however the fit rates it."""
    from ep2p_loc_ros.reflectance_alignment import AlignmentConfig

    seq, lidar_map, T_gt, desc, ids = _split_map(scene, 0.0)
    errors, confidence_of = {}, {}
    rescued = _FirstThen(0.1, 0.9)  # (the fit would rate the rescue's choice likely)
    for name, weight, confidence in (("rescued", 0.0, rescued), ("first's weight", 0.3, 0.1), ("likely", 0.0, 0.9)):
        cfg = AlignmentConfig(
            forward_range_m=3.0,
            likelihood_weight=0.0,
            turned_starts_deg=(20.0,),
            turned_views=1,
            likelihood_starts=0,
            manhattan_starts_m=(),
            rescue_support_weight=weight,
        )
        session = CodedSession(_CODES)
        session.descriptor = desc
        loc = Localizer(lidar_map, session, OracleHead(MC), MC, _cfg(top_k=2, alignment=cfg))
        res, _ = _rescued(loc, seq, confidence)
        assert set(res.retrieved) == ids
        errors[name], confidence_of[name] = _errors(res.T_map_cam, T_gt), res.confidence
    assert errors["rescued"][0] < 0.5 and errors["rescued"][1] < 1.0, errors
    assert errors["first's weight"][0] > 4.0 and errors["likely"][0] > 4.0, errors
    assert rescued.calls == 2 and confidence_of == {"rescued": 0.1, "first's weight": 0.1, "likely": 0.9}


def test_the_choice_made_again_weighs_the_hypotheses_agreement_by_the_rescues_weight():
    """``alignment.rescue_agreement_weight``: two starts that ended together outrank a lone pose that scores better
    in the first choice (``agreement_weight``), not in the choice made again after the rescue (0 by default: the
    rescue's starts come in families that end together wherever they end); set to the first choice's weight, the
    rescue ranks them as the first choice does."""
    from types import SimpleNamespace

    from ep2p_loc_ros.localizer import _HypothesisChoice
    from ep2p_loc_ros.reflectance_alignment import AlignmentConfig, AlignmentResult

    lone, pair = np.eye(4), np.eye(4)
    pair[:3, 3] = (0.0, 0.0, 6.0)  # 6 m along the axis: another place
    poses = [
        AlignmentResult(True, lone, score=0.50, start_score=0.4, points=5000, evaluations=1),
        AlignmentResult(True, pair, score=0.45, start_score=0.4, points=5000, evaluations=1),
        AlignmentResult(True, pair.copy(), score=0.45, start_score=0.4, points=5000, evaluations=1),
    ]
    cfg = AlignmentConfig()
    agree = pose_agreement([p.T_map_cam for p in poses], cfg.agreement_radius_m, cfg.agreement_deg)
    assert agree.tolist() == [0, 1, 1]
    votes = ([40, 40, 40], None)  # the same support: the agreement decides

    def first(config: AlignmentConfig, rescue: bool) -> int:
        stand_in = SimpleNamespace(cfg=config)
        return int(_HypothesisChoice._ranked(stand_in, poses, votes, agree, None, rescue)[0])

    assert cfg.agreement_weight > 0.05 and cfg.rescue_agreement_weight == 0.0
    assert first(cfg, rescue=False) == 1
    assert first(cfg, rescue=True) == 0
    assert first(replace(cfg, rescue_agreement_weight=cfg.agreement_weight), rescue=True) == 1


def test_an_unlikely_single_image_pose_is_chosen_again_from_a_grid_of_poses_along_the_walls(turned_scene):
    """``alignment.manhattan_grid_m``: as above, but every viewpoint also stands 2 m to the side of where the camera
    stands (across its turned axis), so the viewpoint turned along the image's lines in place faces the right way
    from the wrong place. A square grid around the viewpoint at the three headings nearest its own that put its
    walls along the image's lines, scored by the MI less its chance level, gives starts near the true camera: one of
    them wins the choice made again. Without the grid the turned viewpoint alone ends off; with a likely pose no
    start is added."""
    from ep2p_loc_ros.geometry import moved_in_view
    from ep2p_loc_ros.reflectance_alignment import AlignmentConfig

    seq, lidar_map, T_gt, desc, _ = turned_scene
    shifted = copy.copy(lidar_map)
    shifted.T_map_viewpoint = np.array([moved_in_view(T, 0.0, 2.0)[0] for T in lidar_map.T_map_viewpoint])
    results, coarse_starts = {}, {}
    for name, reach, confidence in (("grid", 2.5, 0.1), ("off", 0.0, 0.1), ("likely", 2.5, 0.9)):
        cfg = AlignmentConfig(
            forward_range_m=3.0,
            turned_starts_deg=(),
            likelihood_starts=0,
            manhattan_starts_m=(0.0,),
            manhattan_views=1,
            manhattan_grid_m=reach,
            manhattan_grid_starts=3,
        )
        results[name], coarse_starts[name] = _rescued(
            _localizer(shifted, desc, top_k=1, alignment=cfg), seq, confidence
        )
    dt, dr = _errors(results["grid"].T_map_cam, T_gt)
    assert dt < 0.5 and dr < 1.0, (dt, dr)
    assert _errors(results["off"].T_map_cam, T_gt)[0] > 2.0
    assert _errors(results["likely"].T_map_cam, T_gt)[1] > 10.0
    # the grid's three best distinct poses are starts after the turned viewpoint's; one near the truth
    extra = coarse_starts["grid"][len(coarse_starts["off"]) :]
    assert len(extra) == 3
    np.testing.assert_array_equal(coarse_starts["grid"][: len(coarse_starts["off"])], coarse_starts["off"])
    assert min(_errors(T, T_gt)[0] + _errors(T, T_gt)[1] / 6.0 for T in extra) < 1.0
    assert len(coarse_starts["likely"]) < len(coarse_starts["off"])  # no rescue: neither starts
