"""Point encoder: the invariances its docstring promises, chunking, and voxel bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ep2p_loc_ros.geometry import rotvec_to_matrix
from ep2p_loc_ros.model.config import ModelConfig
from ep2p_loc_ros.model.point_encoder import PointEncoder, cell_priority, voxel_downsample


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A street corner: ground, two walls and a pole, at 0.3 m spacing with jitter."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(np.arange(-6, 6, 0.3), np.arange(-6, 6, 0.3)), -1).reshape(-1, 2)
    ground = np.column_stack([g, np.full(len(g), -1.7)])
    w = np.stack(np.meshgrid(np.arange(-6, 6, 0.3), np.arange(-1.7, 3, 0.3)), -1).reshape(-1, 2)
    wall1 = np.column_stack([w[:, 0], np.full(len(w), 6.0), w[:, 1]])
    wall2 = np.column_stack([np.full(len(w), 6.0), w[:, 0], w[:, 1]])
    z = np.arange(-1.7, 2.5, 0.3)
    pole = np.column_stack([np.full(len(z), 2.0), np.full(len(z), 1.0), z])
    pts = np.concatenate([ground, wall1, wall2, pole])
    pts = pts + rng.normal(0, 0.03, pts.shape)  # no exact kNN distance ties (a tie may break either way)
    refl = np.concatenate([np.full(len(ground), 0.2), np.full(2 * len(w), 0.5), np.full(len(z), 0.9)])
    return pts, refl


@pytest.fixture(scope="module")
def encoder() -> PointEncoder:
    torch.manual_seed(0)
    return PointEncoder(ModelConfig()).eval()


def test_point_encoder_features_invariant_to_yaw_and_horizontal_shift(encoder):
    pts, refl = _scene()
    R = rotvec_to_matrix(np.array([0.0, 0.0, 0.7]))
    moved = pts @ R.T + np.array([12.5, -3.0, 0.0])
    prio = cell_priority(pts, 0.3)  # the coarse ranks belong to the map's cells, whatever frame encodes them
    with torch.no_grad():
        a = encoder(pts.astype(np.float32), refl.astype(np.float32), priority=prio)
        b = encoder(moved.astype(np.float32), refl.astype(np.float32), priority=prio)
    assert a.features.shape == (len(pts), 64) and a.global_descriptor.shape == (128,)
    torch.testing.assert_close(a.features, b.features, atol=2e-4, rtol=0)
    torch.testing.assert_close(a.global_descriptor, b.global_descriptor, atol=2e-4, rtol=0)
    # ...but height matters: lifting the scene by 2 m changes the features (z is relative to the viewpoint).
    with torch.no_grad():
        c = encoder((pts + np.array([0, 0, 2.0])).astype(np.float32), refl.astype(np.float32), priority=prio)
    assert float((a.features - c.features).abs().max()) > 1e-2


def test_point_encoder_chunking_does_not_change_the_result(encoder):
    pts, refl = _scene(1)
    with torch.no_grad():
        whole = encoder(pts.astype(np.float32), refl.astype(np.float32), chunk_size=100_000)
        chunked = encoder(pts.astype(np.float32), refl.astype(np.float32), chunk_size=97)
    torch.testing.assert_close(whole.features, chunked.features, atol=1e-5, rtol=0)
    norms = whole.features.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_point_encoder_voxel_downsample_centroids_and_inverse():
    pts = np.array([[0.01, 0.01, 0.01], [0.05, 0.05, 0.05], [1.0, 1.0, 1.0], [0.02, 0.0, 0.0]])
    refl = np.array([0.0, 1.0, 0.5, 0.5])
    pv, rv, inv = voxel_downsample(pts, refl, 0.3)
    assert len(pv) == 2 and inv.tolist() == [0, 0, 1, 0]
    np.testing.assert_allclose(pv[0], pts[[0, 1, 3]].mean(0), atol=1e-6)
    np.testing.assert_allclose(rv, [0.5, 0.5])
    with pytest.raises(ValueError, match="voxel"):
        voxel_downsample(pts, refl, 0.0)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        voxel_downsample(pts[:, :2], refl, 0.3)


def _street(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 60 m street in map coordinates far from the origin: ground, two facades with recesses, poles, 0.15 m."""
    rng = np.random.default_rng(seed)
    x0, y0 = 985.0, 500.0
    g = np.stack(np.meshgrid(np.arange(0, 60, 0.15), np.arange(-12, 12, 0.15)), -1).reshape(-1, 2)
    ground = np.column_stack([g[:, 0] + x0, g[:, 1] + y0, np.full(len(g), -1.65)])
    f = np.stack(np.meshgrid(np.arange(0, 60, 0.15), np.arange(-1.65, 8, 0.15)), -1).reshape(-1, 2)
    recess = 1.5 * (np.floor(f[:, 0] / 7.0) % 2)  # every other 7 m the facade steps back
    left = np.column_stack([f[:, 0] + x0, y0 + 12 + recess, f[:, 1]])
    right = np.column_stack([f[:, 0] + x0, y0 - 12 - recess[::-1], f[:, 1]])
    z = np.arange(-1.65, 4, 0.15)
    poles = np.concatenate(
        [np.column_stack([np.full(len(z), x0 + px), np.full(len(z), y0 + 9), z]) for px in range(3, 60, 8)]
    )
    pts = np.concatenate([ground, left, right, poles])
    pts = pts + rng.normal(0, 0.02, pts.shape)
    refl = np.concatenate([np.full(len(ground), 0.2), np.full(len(left) + len(right), 0.5), np.full(len(poles), 0.9)])
    return pts, refl + rng.uniform(0, 0.05, len(refl))


def test_point_encoder_map_features_agree_with_training_crops(encoder):
    """Map time encodes whole submaps; training encodes frustum crops relative to a jittered viewpoint. Away from
    the crop's border the features must agree, or the matcher sees different features than it learned."""
    from scipy.spatial import cKDTree

    pts, refl = _street()
    viewpoint = np.array([1000.0, 500.0, 0.0])
    whole = encoder.encode_cloud(pts, refl, viewpoint).features.numpy()
    crop = pts[:, 0] < 1018.0  # the part of the street a camera looking back would see
    jittered = viewpoint + np.array([2.13, -1.37, 0.0])  # training's viewpoint jitter: not a multiple of the voxel
    part = encoder.encode_cloud(pts[crop], refl[crop], jittered).features.numpy()
    dist, _ = cKDTree(pts[~crop]).query(pts[crop])
    inner = dist > 10.0  # beyond the encoder's receptive field from the cut
    assert inner.sum() > 5000
    cos = np.sum(whole[crop][inner] * part[inner], axis=1)
    assert np.quantile(cos, 0.01) > 0.9999, np.quantile(cos, [0.01, 0.5])

    # The same points in another order give the same features, point for point.
    perm = np.random.default_rng(1).permutation(len(pts))
    shuffled = encoder.encode_cloud(pts[perm], refl[perm], viewpoint).features.numpy()
    np.testing.assert_allclose(shuffled, whole[perm], atol=1e-4)

    # Control: ranking the coarse level by anything tied to the crop (here the crop's own frame) breaks agreement,
    # so the check above is sensitive to what it guards.
    pv, rv, inverse = voxel_downsample(pts[crop], refl[crop], 0.3)
    local = (pv - jittered).astype(np.float32)
    with torch.no_grad():
        own = encoder(local, rv, priority=cell_priority(local, 0.3)).features.numpy()[inverse]
    assert np.quantile(np.sum(whole[crop][inner] * own[inner], axis=1), 0.05) < 0.999


def test_point_context_cell_statistics_and_agreement_between_map_and_crop():
    """``PointContext``: per cell size, the mean feature of the point's map-grid cell and its offset from the
    cell's centroid; a new module is the identity; and with it the map's and a crop's features still agree away
    from the crop's border, because the grid is anchored in the map frame (not at the crop's viewpoint)."""
    from ep2p_loc_ros.model.point_context import PointContext

    cfg = ModelConfig(point_context_cells=(2.0, 8.0))
    ctx_mod = PointContext(cfg)
    pts, _ = _scene()
    feats = torch.nn.functional.normalize(
        torch.randn(len(pts), cfg.feature_dim, generator=torch.Generator().manual_seed(0)), dim=1
    )
    ctx = ctx_mod.pool(pts, feats)
    assert ctx.shape == (len(pts), ctx_mod.context_dim) == (len(pts), 2 * (cfg.feature_dim + 3))
    d = cfg.feature_dim
    for i in (0, 500, len(pts) - 1):
        for k, size in enumerate(cfg.point_context_cells):
            same = (np.floor(pts / size) == np.floor(pts[i] / size)).all(1)
            block = ctx[i, k * (d + 3) : (k + 1) * (d + 3)]
            torch.testing.assert_close(block[:d], feats[torch.from_numpy(same)].mean(0))
            np.testing.assert_allclose(block[d:].numpy(), (pts[i] - pts[same].mean(0)) / size, atol=1e-5)
    torch.testing.assert_close(ctx_mod(feats, ctx), feats)  # zero-initialised output: starts as the identity

    torch.manual_seed(0)
    encoder = PointEncoder(cfg).eval()
    torch.nn.init.normal_(encoder.context.out.weight, std=0.3)  # as if trained
    from scipy.spatial import cKDTree

    pts, refl = _street()
    viewpoint = np.array([1000.0, 500.0, 0.0])
    whole = encoder.encode_cloud(pts, refl, viewpoint).features
    crop = pts[:, 0] < 1018.0
    part = encoder.encode_cloud(pts[crop], refl[crop], viewpoint + np.array([2.13, -1.37, 0.0])).features
    plain = PointEncoder(ModelConfig()).eval()
    plain.load_state_dict({k: v for k, v in encoder.state_dict().items() if not k.startswith("context.")})
    assert float((whole - plain.encode_cloud(pts, refl, viewpoint).features).norm(dim=1).min()) > 1e-3  # it acts
    dist, _ = cKDTree(pts[~crop]).query(pts[crop])
    whole_cells = np.floor(pts[crop][:, 0] / 8.0) < np.floor(1018.0 / 8.0)  # 8 m cells the cut leaves whole
    inner = torch.from_numpy((dist > 10.0) & whole_cells)
    assert int(inner.sum()) > 3000
    cos = (whole[torch.from_numpy(crop)][inner] * part[inner]).sum(1)
    assert float(torch.quantile(cos, 0.01)) > 0.9999, float(cos.min())
