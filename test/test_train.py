"""End-to-end training on a tiny synthetic drive: the loss falls, resuming is exact, the output is a model dir."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from ep2p_loc_ros.model.config import ModelConfig
from ep2p_loc_ros.model.heads import patch_centers
from ep2p_loc_ros.model.network import ONNX_FILE, load_network
from ep2p_loc_ros.model.point_encoder import cell_priority
from ep2p_loc_ros.model.train import TrainConfig, train

TINY = ModelConfig(
    image_height=96,
    image_width=320,
    feature_dim=32,
    global_dim=32,
    image_channels=(16, 24, 32, 48),
    point_hidden=32,
    point_layers=2,
    refine_hidden=32,
)


def _cfg(steps: int, **kw) -> TrainConfig:
    base = dict(
        steps=steps,
        batch_size=2,
        lr=3e-3,
        pose_warmup=steps // 2,
        match_points=256,
        other_points=64,
        pixel_points=64,
        pose_points=96,
        mc_samples=32,
        log_every=1,
        checkpoint_every=2,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    from ep2p_loc_ros.sim.writer import SimConfig, generate_sequence

    root = tmp_path_factory.mktemp("train") / "seq"
    generate_sequence(root, SimConfig(kind="outdoor", frames=4, seed=11, rate_hz=2.0), progress=False)
    return root


@pytest.fixture(scope="module")
def trained(drive, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("model") / "tiny"
    train([drive], out, TINY, _cfg(40), progress=False)
    return out


def test_train_loss_falls_and_writes_a_model_dir(trained):
    log = [json.loads(line) for line in (trained.with_name("tiny.training") / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 41))
    first = np.mean([r["patch"] for r in log[:5]])
    last = np.mean([r["patch"] for r in log[-5:]])
    assert last < first - 0.5, (first, last)  # the patch classifier learns
    assert all("pose" in r for r in log[20:]) and not any("pose" in r for r in log[:20])  # the pose loss joins
    assert all(np.isfinite(r["total"]) for r in log)
    net, info = load_network(trained)
    assert net.config == TINY and info["train"]["steps"] == 40
    assert (trained / ONNX_FILE).stat().st_size > 10_000


def test_train_matches_beat_random_correspondences(trained, drive):
    """On a training frame, predicted patches land near the true pixels far more often than random patches."""
    from ep2p_loc_ros.model.dataset import SequenceData

    net, _ = load_network(trained)
    sd = SequenceData(drive, progress=False)
    s = sd.sample(1, TINY, np.random.default_rng(0))
    with torch.no_grad():
        patches, _ = net.image_encoder(torch.from_numpy(s.image[None]))
        prio = cell_priority(s.points_map, TINY.point_voxel)
        feats = net.point_encoder(s.points_local, s.reflectance, priority=prio).features[torch.from_numpy(s.visible)]
        _, px, _ = net.head.match(feats, patches[0])
    uv = torch.from_numpy(s.uv[s.visible])
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < TINY.image_width) & (uv[:, 1] >= 0) & (uv[:, 1] < TINY.image_height)
    err = (px - uv)[inside].norm(dim=1)
    centers = patch_centers(TINY)
    rand = centers[torch.randint(len(centers), (int(inside.sum()),), generator=torch.Generator().manual_seed(0))]
    err_rand = (rand - uv[inside]).norm(dim=1)
    near, near_rand = float((err < 24).float().mean()), float((err_rand < 24).float().mean())
    assert near > 2 * near_rand, (near, near_rand)
    assert float(err.median()) < 0.7 * float(err_rand.median())


def test_freeze_sample_keeps_the_encoder_features_of_a_fixed_subset(trained, drive):
    """The frozen-encoder cache: features computed on the whole crop (not on the kept rows alone), a subset of at
    most twice what a step draws with every kept row consistent, the image in float16, and far fewer bytes."""
    from ep2p_loc_ros.model.dataset import SequenceData
    from ep2p_loc_ros.model.losses import make_targets
    from ep2p_loc_ros.model.train import TrainingModel, freeze_sample

    net, _ = load_network(trained)
    net.eval()
    s = SequenceData(drive, progress=False).sample(1, TINY, np.random.default_rng(0))
    cfg = _cfg(1, match_points=64, other_points=16)
    f = freeze_sample(net, s, cfg, np.random.default_rng(1))
    with torch.no_grad():
        out = net.point_encoder(s.points_local, s.reflectance, priority=cell_priority(s.points_map, TINY.point_voxel))
    rows = [int(np.flatnonzero((s.points_map == p).all(1))[0]) for p in f.points_map]
    assert len(set(rows)) == len(rows) == len(f.point_features)
    inside = make_targets(torch.from_numpy(f.uv), torch.from_numpy(f.visible), TINY).patch < TINY.num_patches
    assert int(inside.sum()) == 2 * 64 and int((~inside).sum()) == 2 * 16  # the drive has more of both
    np.testing.assert_array_equal(f.uv, s.uv[rows])
    np.testing.assert_array_equal(f.visible, s.visible[rows])
    np.testing.assert_array_equal(f.points_local, s.points_local[rows])
    torch.testing.assert_close(torch.from_numpy(f.point_features).float(), out.features[rows], atol=2e-3, rtol=1e-2)
    feats, desc = TrainingModel(net, cfg).encode_points(f)  # what the loss sees: the cached rows, as float32
    assert feats.dtype == torch.float32 and feats.shape == (len(rows), TINY.feature_dim)
    torch.testing.assert_close(desc, out.global_descriptor)
    assert f.image.dtype == np.float16 and np.abs(f.image.astype(np.float32) - s.image).max() < 1e-3

    def size(x):
        return sum(v.nbytes for v in vars(x).values() if isinstance(v, np.ndarray))

    assert size(f) < 0.5 * (size(s) + out.features.numel() * 2), (size(f), size(s))


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process samples", "2 sample workers"])
def test_train_resume_continues_exactly(drive, tmp_path, monkeypatch, workers):
    import ep2p_loc_ros.model.train as train_mod

    torch.set_num_threads(1)
    cfg = _cfg(4, pose_warmup=2, workers=workers)
    train([drive], tmp_path / "straight", TINY, cfg, progress=False)

    save = train_mod._save_checkpoint

    def save_then_die(path, model, opt, step, *args):
        save(path, model, opt, step, *args)
        if step == 2:
            raise KeyboardInterrupt  # killed right after the step-2 checkpoint

    # A previous model at the output path survives the killed run byte for byte.
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    before = {p.name: p.read_bytes() for p in (tmp_path / "resumed").iterdir()}
    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train([drive], tmp_path / "resumed", TINY, cfg, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "resumed").iterdir()} == before
    assert load_network(tmp_path / "resumed")[0] is not None
    monkeypatch.setattr(train_mod, "_save_checkpoint", save)
    train([drive], tmp_path / "resumed", TINY, cfg, resume=True, progress=False)
    a, _ = load_network(tmp_path / "straight")
    b, _ = load_network(tmp_path / "resumed")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name, atol=1e-6, rtol=1e-5)


def test_train_init_from_starts_from_the_given_model(trained, drive, tmp_path):
    """``--init-from``: fine-tuning starts from the model's weights (lr 0 keeps them) and its config;
    asking for another config is refused."""
    from ep2p_loc_ros.errors import DataError

    out = tmp_path / "ft"
    train([drive], out, None, _cfg(2, lr=0.0), progress=False, init_from=trained)
    a, _ = load_network(trained)
    b, info = load_network(out)
    assert b.config == TINY and info["init_from"] == str(trained)
    # parameters, not buffers: BatchNorm's running statistics move with every forward pass in training
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(x, y, msg=name)
    with pytest.raises(DataError, match="configuration differs"):
        train([drive], tmp_path / "bad", ModelConfig(), _cfg(1), progress=False, init_from=trained)


def test_train_frozen_point_encoder_trains_the_image_side_only(trained, drive, tmp_path):
    """``--freeze-point-encoder``: the point encoder's weights stay exactly the initial ones, the image side learns
    (its patch loss falls on the cached point features), and a frozen encoder without ``--init-from`` is refused."""
    from ep2p_loc_ros.errors import DataError

    torch.set_num_threads(1)
    out = tmp_path / "frozen"
    cfg = _cfg(24, freeze_point_encoder=True, use_pose_loss=False, photometric_jitter=0.2, lr=3e-3)
    train([drive], out, None, cfg, progress=False, init_from=trained)
    a, _ = load_network(trained)
    b, info = load_network(out)
    assert info["train"]["freeze_point_encoder"] is True
    for (name, x), y in zip(a.point_encoder.state_dict().items(), b.point_encoder.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, msg=name, rtol=0, atol=0)
    moved = [
        n
        for (n, x), y in zip(a.image_encoder.named_parameters(), b.image_encoder.parameters(), strict=True)
        if not torch.equal(x, y)
    ]
    assert len(moved) > 10, moved
    log = [json.loads(line) for line in (out.with_name("frozen.training") / "metrics.jsonl").read_text().splitlines()]
    first = np.mean([r["patch"] for r in log[:4]])
    last = np.mean([r["patch"] for r in log[-4:]])
    assert last < first, (first, last)
    with pytest.raises(DataError, match="needs --init-from"):
        train([drive], tmp_path / "bad", TINY, _cfg(1, freeze_point_encoder=True), progress=False)
    with pytest.raises(ValueError, match="photometric_jitter"):
        train([drive], tmp_path / "bad", None, _cfg(1, photometric_jitter=1.5), progress=False, init_from=trained)


def test_train_frozen_point_encoder_adds_and_trains_a_point_context(trained, drive, tmp_path):
    """``--point-context-cells`` on a model without the module: it is added as the identity and, with the encoder
    frozen, trains on the cached features (its cache rows are the whole crop's cell statistics) while the
    encoder's own weights stay bit-identical; the model directory then carries it (config and weights)."""
    from dataclasses import replace

    from ep2p_loc_ros.model.dataset import SequenceData
    from ep2p_loc_ros.model.train import freeze_sample

    torch.set_num_threads(1)
    cfg_ctx = replace(TINY, point_context_cells=(2.0, 8.0))
    out = tmp_path / "ctx"
    cfg = _cfg(12, freeze_point_encoder=True, use_pose_loss=False, lr=3e-3)
    train([drive], out, cfg_ctx, cfg, progress=False, init_from=trained)
    a, _ = load_network(trained)
    b, _ = load_network(out)
    assert a.point_encoder.context is None and b.config == cfg_ctx and b.point_encoder.context is not None
    for name, x in a.point_encoder.state_dict().items():
        torch.testing.assert_close(x, b.point_encoder.state_dict()[name], msg=name, rtol=0, atol=0)
    assert float(b.point_encoder.context.out.weight.detach().abs().sum()) > 0  # moved off its zero start

    s = SequenceData(drive, progress=False).sample(1, cfg_ctx, np.random.default_rng(0))
    f = freeze_sample(b, s, _cfg(1, match_points=64, other_points=16), np.random.default_rng(1))
    with torch.no_grad():
        base = b.point_encoder(s.points_local, s.reflectance, priority=cell_priority(s.points_map, TINY.point_voxel))
        full = b.point_encoder.context.pool(s.points_map, base.features)
    rows = [int(np.flatnonzero((s.points_map == p).all(1))[0]) for p in f.points_map]
    torch.testing.assert_close(torch.from_numpy(f.point_context).float(), full[rows], atol=2e-3, rtol=1e-2)


def test_train_sample_workers_make_each_sample_from_its_number_alone(drive):
    """Which worker makes sample n, and from where the stream starts (a resume), changes nothing: the sample and
    its kNN graph are those the training process would make itself."""
    from ep2p_loc_ros.model.dataset import SequenceData
    from ep2p_loc_ros.model.point_encoder import build_point_graph
    from ep2p_loc_ros.model.train import _sample_stream

    data = [SequenceData(drive, progress=False)]
    frames = [(0, i) for i in range(len(data[0]))]
    cfg = _cfg(1, workers=2, seed=5)
    first = [next(s) for s in [_sample_stream(data, frames, TINY, cfg, 0, 1, 0)] for _ in range(6)]
    later = _sample_stream(data, frames, TINY, replace(cfg, workers=1), 0, 1, 4)
    # every frame once per pass, in an order that differs between passes
    assert sorted(s.frame for s in first[:4]) == list(range(4)) and {s.frame for s in first[4:]} <= set(range(4))
    for a, b in zip(first[4:], [next(later), next(later)], strict=True):
        assert a.frame == b.frame
        np.testing.assert_array_equal(a.points_local, b.points_local)  # the same viewpoint jitter
        np.testing.assert_array_equal(a.image, b.image)
        for x, y in zip(_graph_tensors(a.point_graph), _graph_tensors(b.point_graph), strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    s = first[0]
    own = build_point_graph(s.points_local, s.reflectance, TINY, priority=cell_priority(s.points_map, TINY.point_voxel))
    for x, y in zip(_graph_tensors(s.point_graph), _graph_tensors(own), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    # two runs that differ only in their seed draw different viewpoints
    other = next(_sample_stream(data, frames, TINY, replace(cfg, seed=6), 0, 1, 0))
    assert other.frame != s.frame or not np.array_equal(other.points_local, s.points_local)


def _graph_tensors(g):
    return [
        g.fine.geometry,
        g.fine.pairs,
        g.fine.neighbors,
        g.coarse.geometry,
        g.coarse.neighbors,
        g.pool_index,
        g.up_index,
        g.up_weight,
    ]


def test_train_sample_workers_refuse_a_frozen_point_encoder(trained, drive, tmp_path):
    from ep2p_loc_ros.errors import DataError

    with pytest.raises(DataError, match="--workers"):
        train(
            [drive],
            tmp_path / "m",
            None,
            _cfg(1, workers=2, freeze_point_encoder=True),
            init_from=trained,
            progress=False,
        )


def test_training_prior_is_the_run_time_viewpoint_prior_of_a_guess_camera(drive):
    """``--viewpoint-prior``: with no offset the guess is the true camera, so each point's expected pixel is its true
    pixel; the prior then lowers the patch loss of random features (it points at the truth), and with the default
    offsets the guess moves along the optical axis, so the expected pixels slide along their rays."""
    from ep2p_loc_ros.model.dataset import SequenceData
    from ep2p_loc_ros.model.heads import MatchingHead
    from ep2p_loc_ros.model.losses import make_targets, matching_losses
    from ep2p_loc_ros.model.train import training_prior

    s = SequenceData(drive, progress=False).sample(1, TINY, np.random.default_rng(0))
    targets_all = make_targets(torch.from_numpy(s.uv), torch.from_numpy(s.visible), TINY)
    rows = np.flatnonzero((targets_all.patch < TINY.num_patches).numpy())[:300]
    exact = replace(_cfg(1), viewpoint_prior=True, viewpoint_forward_m=0.0, viewpoint_lateral_m=0.0)
    expected, weight = training_prior(s, rows, replace(exact, viewpoint_yaw_deg=0.0), np.random.default_rng(0))
    np.testing.assert_allclose(expected.numpy(), s.uv[rows], atol=1e-3)
    assert weight.shape == (len(rows), 2, 2) and bool((weight.diagonal(0, 1, 2) > 0).all())

    torch.manual_seed(0)
    head = MatchingHead(TINY)
    feats = torch.nn.functional.normalize(torch.randn(len(rows), TINY.feature_dim), dim=1)
    patches = torch.nn.functional.normalize(torch.randn(TINY.feature_dim, *TINY.grid_size), dim=0)
    targets = make_targets(torch.from_numpy(s.uv[rows]), torch.from_numpy(s.visible[rows]), TINY)
    plain = matching_losses(head, feats, patches, targets)
    guided = matching_losses(head, feats, patches, targets, prior=(expected, weight))
    # wide along each ray (3 m forward), so random features still miss most patches, but far less badly
    assert guided["patch"] < plain["patch"] - 1.0 and guided["patch_acc"] > plain["patch_acc"] + 0.02

    moved, _ = training_prior(s, rows, replace(exact, viewpoint_forward_m=6.0), np.random.default_rng(3))
    centre = np.array([(TINY.image_width - 1) / 2, (TINY.image_height - 1) / 2])
    a, b = s.uv[rows] - centre, moved.numpy() - centre
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-9)
    assert np.median(cos) > 0.99 and np.median(np.abs(np.linalg.norm(b, axis=1) - np.linalg.norm(a, axis=1))) > 1.0


def test_train_with_the_viewpoint_prior_runs_and_records_it(trained, drive, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "prior"
    cfg = _cfg(4, freeze_point_encoder=True, use_pose_loss=False, viewpoint_prior=True)
    train([drive], out, None, cfg, progress=False, init_from=trained)
    _, info = load_network(out)
    assert info["train"]["viewpoint_prior"] is True
    log = [json.loads(line) for line in (out.with_name("prior.training") / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["patch"]) for r in log)


def test_viewpoint_prior_fraction_primes_that_share_of_frames_and_leaves_full_runs_unchanged(drive, tmp_path):
    """``--viewpoint-prior-fraction``: about that share of frames get the prior; at 1 no random number is drawn, so
    runs with the prior on every frame keep their random stream; out of [0, 1] is refused before training."""
    from ep2p_loc_ros.model.train import _prior_this_frame

    on = replace(_cfg(1), viewpoint_prior=True)
    rng = np.random.default_rng(5)
    before = rng.bit_generator.state
    assert all(_prior_this_frame(on, rng) for _ in range(50)) and rng.bit_generator.state == before
    assert not any(_prior_this_frame(replace(on, viewpoint_prior=False), rng) for _ in range(50))
    assert not any(_prior_this_frame(replace(on, viewpoint_prior_fraction=0.0), rng) for _ in range(50))
    share = np.mean([_prior_this_frame(replace(on, viewpoint_prior_fraction=0.3), rng) for _ in range(2000)])
    assert 0.26 < share < 0.34
    with pytest.raises(ValueError, match="viewpoint_prior_fraction"):
        train([drive], tmp_path / "m", None, replace(on, viewpoint_prior_fraction=1.5), progress=False)
    with pytest.raises(ValueError, match="needs viewpoint_prior"):
        train([drive], tmp_path / "m", None, replace(_cfg(1), viewpoint_prior_fraction=0.5), progress=False)


@pytest.fixture(scope="module")
def pack(drive, tmp_path_factory):
    from ep2p_loc_ros.model.training_pack import write_training_pack

    return write_training_pack(drive, tmp_path_factory.mktemp("pack") / "drive.npz", TINY, progress=False)


def test_training_pack_gives_the_samples_of_its_sequence(drive, pack):
    """A pack holds the sequence's fused map bit for bit, so its samples have the same points, visibility and
    pixels; only the image differs, by JPEG's loss. It is much smaller than the sequence."""
    from ep2p_loc_ros.model.dataset import SequenceData

    a, b = SequenceData(drive, progress=False), SequenceData(pack, progress=False)
    assert len(a) == len(b) == 4
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.reflectance, b.reflectance)
    for i in range(len(a)):
        sa, sb = a.sample(i, TINY, np.random.default_rng(i)), b.sample(i, TINY, np.random.default_rng(i))
        np.testing.assert_array_equal(sa.T_cam_map, sb.T_cam_map)
        np.testing.assert_array_equal(sa.points_local, sb.points_local)
        np.testing.assert_array_equal(sa.visible, sb.visible)
        np.testing.assert_array_equal(sa.uv, sb.uv)
        np.testing.assert_array_equal(sa.camera.K, sb.camera.K)
        assert sa.image.shape == sb.image.shape == (3, TINY.image_height, TINY.image_width)
        assert np.abs(sa.image - sb.image).mean() < 4 / 255  # JPEG quality 95
    sequence_bytes = sum(p.stat().st_size for p in drive.rglob("*") if p.is_file())
    assert pack.stat().st_size < 0.2 * sequence_bytes, (pack.stat().st_size, sequence_bytes)


def test_train_from_a_pack_stops_at_its_time_limit_and_resumes_exactly(pack, tmp_path):
    """``--time-limit``: the run stops after the step that crossed it with a checkpoint and a model; ``--resume``
    then ends where an uninterrupted run ends."""
    torch.set_num_threads(1)
    cfg = _cfg(4, pose_warmup=2)
    train([pack], tmp_path / "straight", TINY, cfg, progress=False)
    train([pack], tmp_path / "cut", TINY, cfg, progress=False, time_limit_s=1e-6)
    log = (tmp_path / "cut.training" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1]
    _, info = load_network(tmp_path / "cut")
    assert info["steps_done"] == 1 and info["train"]["steps"] == 4
    train([pack], tmp_path / "cut", TINY, cfg, resume=True, progress=False)
    a, _ = load_network(tmp_path / "straight")
    b, info = load_network(tmp_path / "cut")
    assert info["steps_done"] == 4
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name, atol=1e-6, rtol=1e-5)


def test_training_pack_refuses_bad_files_and_another_image_size(pack, tmp_path):
    from ep2p_loc_ros.errors import DataError
    from ep2p_loc_ros.model.config import ModelConfig
    from ep2p_loc_ros.model.dataset import SequenceData

    with pytest.raises(DataError, match="packed for 320x96 network images, the model takes 640x192"):
        SequenceData(pack, progress=False).sample(0, ModelConfig(), np.random.default_rng(0))
    with pytest.raises(DataError, match="map voxel"):
        SequenceData(pack, map_voxel=0.3, progress=False)
    raw = pack.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cannot read training pack"):
        SequenceData(truncated, progress=False)
    with np.load(pack, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    cases = {
        "version": {**arrays, "format_version": np.array(2)},
        "foreign": {"points": arrays["points"]},
        "nan": {**arrays, "points": np.full_like(arrays["points"], np.nan)},
        "offsets": {**arrays, "jpeg_offsets": arrays["jpeg_offsets"][:-1]},
        "pickled": {**arrays, "T_world_cam": np.array([object()], dtype=object)},
        "voxel": {**arrays, "map_voxel": np.array([0.2, 0.3])},
        "camera": {**arrays, "K": np.zeros((3, 3))},
    }
    messages = {
        "version": "format_version 2 is not supported",
        "foreign": "not a training pack",
        "nan": "points have NaN",
        "offsets": "jpeg_offsets",
        "pickled": "cannot read training pack",
        "voxel": "malformed training pack",
        "camera": "malformed training pack",
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.npz"
        with open(path, "wb") as f:
            np.savez(f, **content)
        with pytest.raises(DataError, match=messages[name]):
            SequenceData(path, progress=False)
