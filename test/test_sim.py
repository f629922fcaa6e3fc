"""Synthetic worlds (ep2p_loc_ros.sim): determinism, the KITTI layout, sensor models, exact visibility, atomic
writes and the ``ep2p-loc sim`` CLI. Sequences are 1-3 frames: each generation costs 1-4 s on 2 cores."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ep2p_loc_ros.cli import main
from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence
from ep2p_loc_ros.errors import DataError
from ep2p_loc_ros.geometry import invert, transform_points
from ep2p_loc_ros.sim import writer
from ep2p_loc_ros.sim.visibility import as_tracer, visible_points
from ep2p_loc_ros.sim.writer import SimConfig, generate_sequence, setup_sequence

OUTDOOR = SimConfig(kind="outdoor", frames=3, seed=7, blocks=2)
INDOOR = SimConfig(kind="indoor", frames=2, seed=3)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def outdoor_seq(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "outdoor"
    generate_sequence(out, OUTDOOR, progress=False)
    return out


@pytest.fixture(scope="module")
def indoor_seq(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "indoor"
    generate_sequence(out, INDOOR, progress=False)
    return out


def test_sim_both_kinds_generate_full_layout(outdoor_seq: Path, indoor_seq: Path):
    for seq, cfg in ((outdoor_seq, OUTDOOR), (indoor_seq, INDOOR)):
        names = {p.name for p in seq.iterdir()}
        assert names == {"image_2", "velodyne", "calib.txt", "poses.txt", "times.txt", "world_mesh.npz", "sim.json"}
        assert sorted(p.name for p in (seq / "image_2").iterdir()) == [f"{i:06d}.png" for i in range(cfg.frames)]
        assert sorted(p.name for p in (seq / "velodyne").iterdir()) == [f"{i:06d}.bin" for i in range(cfg.frames)]
        doc = json.loads((seq / "sim.json").read_text())
        assert (doc["kind"], doc["seed"], doc["frames"]) == (cfg.kind, cfg.seed, cfg.frames)
        assert doc["format"] == writer.SIM_FORMAT and doc["format_version"] == writer.SIM_FORMAT_VERSION
        assert doc["world"]["triangles"] > 1000
        # no temporary or aside directories left next to the output
        assert [p.name for p in seq.parent.iterdir()] == [seq.name]


def test_sim_deterministic_same_seed_byte_identical(outdoor_seq: Path, tmp_path: Path):
    again = tmp_path / "again"
    generate_sequence(again, OUTDOOR, progress=False)
    a, b = _digests(outdoor_seq), _digests(again)
    assert len(a) == 2 * OUTDOOR.frames + 5
    assert a == b


def test_sim_different_seed_differs(indoor_seq: Path, tmp_path: Path):
    other = tmp_path / "other"
    generate_sequence(other, SimConfig(kind="indoor", frames=INDOOR.frames, seed=INDOOR.seed + 1), progress=False)
    a, b = _digests(indoor_seq), _digests(other)
    assert a.keys() == b.keys()
    differ = {k for k in a if a[k] != b[k]}
    # every frame and the world itself differ; calib.txt (the rig) is the same
    assert {"world_mesh.npz", "sim.json", "image_2/000000.png", "velodyne/000000.bin", "velodyne/000001.bin"} <= differ
    assert "calib.txt" not in differ


def test_sim_kitti_reader_reads_output(outdoor_seq: Path, indoor_seq: Path):
    for seq_dir, cfg, max_range in ((outdoor_seq, OUTDOOR, 120.0), (indoor_seq, INDOOR, 60.0)):
        seq = KittiOdometrySequence(seq_dir)
        assert len(seq) == cfg.frames
        assert seq.image_size == (1241, 376)
        cam = seq.calib.camera
        assert (cam.width, cam.height) == (1241, 376)
        assert cam.fx == pytest.approx(718.856) and cam.cy == pytest.approx(185.2157)
        # the LiDAR sits 1.73 m above the ground and 0.27 m behind the cameras; cam2 6 cm left of cam0
        T_world_velo = seq.T_world_velo(0)
        assert T_world_velo[2, 3] == pytest.approx(1.73, abs=0.05)
        assert np.linalg.norm(T_world_velo[:3, 3] - seq.T_world_cam(0)[:3, 3]) == pytest.approx(
            np.hypot(0.27, np.hypot(0.08, 0.06)), abs=0.02
        )
        poses = seq.poses
        assert poses.shape == (cfg.frames, 4, 4)
        R = poses[:, :3, :3]
        assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-7)
        assert np.allclose(np.linalg.det(R), 1.0, atol=1e-7)
        step = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
        v = cfg.motion().v_max / cfg.motion().rate_hz
        assert np.all(step > 0.2 * v) and np.all(step < 1.05 * v)  # moving forward, never faster than v_max
        assert np.allclose(np.diff(seq.times), 1.0 / cfg.motion().rate_hz)
        img = seq.image(0)
        assert img.shape == (376, 1241, 3) and img.dtype == np.uint8
        assert 20 < img.mean() < 235 and img.std() > 10  # neither blank nor saturated
        for i in range(cfg.frames):
            scan = seq.scan(i)
            assert scan.dtype == np.float32 and scan.shape[1] == 4 and len(scan) > 50_000
            r = np.linalg.norm(scan[:, :3], axis=1)
            assert r.min() > 0.9 - 0.1 and r.max() < max_range + 0.1
            assert scan[:, 3].min() >= 0.0 and scan[:, 3].max() <= 1.0 and scan[:, 3].std() > 0.02
            # ground below the LiDAR: the lowest points are near z = -1.73 in the LiDAR frame
            assert np.percentile(scan[:, 2], 1) == pytest.approx(-1.73, abs=0.15)


def test_sim_lidar_pattern_64_beams_kitti_fov(outdoor_seq: Path, indoor_seq: Path):
    for seq_dir in (outdoor_seq, indoor_seq):
        scan = KittiOdometrySequence(seq_dir).scan(0)
        elev = np.degrees(np.arctan2(scan[:, 2], np.hypot(scan[:, 0], scan[:, 1])))
        beams = np.unique(np.round(elev, 2))  # range noise is along the beam: elevations stay exact
        assert len(beams) == 64
        assert beams.min() == pytest.approx(-24.9, abs=0.02)
        assert beams.max() == pytest.approx(2.0, abs=0.02)
        assert np.allclose(np.diff(beams), 26.9 / 63, atol=0.02)  # evenly spread
        az = np.degrees(np.arctan2(scan[:, 1], scan[:, 0]))
        hist, _ = np.histogram(az, bins=36, range=(-180, 180))
        assert hist.min() > 0  # all around (360 degrees)
        # 0.2 deg azimuth step: at most 1800 returns per beam
        _, counts = np.unique(np.round(elev, 2), return_counts=True)
        assert counts.max() <= 1800


def test_sim_visibility_agrees_with_projection_and_render(outdoor_seq: Path, indoor_seq: Path):
    for seq_dir, cfg in ((outdoor_seq, OUTDOOR), (indoor_seq, INDOOR)):
        seq = KittiOdometrySequence(seq_dir)
        setup = setup_sequence(cfg)
        tracer = as_tracer(seq_dir / "world_mesh.npz")
        i = cfg.frames - 1
        T_world_cam = seq.T_world_cam(i)
        assert np.allclose(T_world_cam, setup.T_world_cam2(i), atol=1e-6)  # reader's pose == the rendered one
        frame = setup.camera.render(tracer, T_world_cam, setup.world.lighting, None)  # noise-free depth
        # the scan on disk is the noisy version of the noise-free scan (same rays, 2 cm along the beam)
        clean = setup.lidar.scan(tracer, setup.T_world_velo(i), None)
        scan = seq.scan(i)
        assert abs(len(clean) - len(scan)) < 0.02 * len(clean)
        for pts in (scan, clean):
            P_world = transform_points(seq.T_world_velo(i), pts[:, :3].astype(np.float64))
            vis = visible_points(tracer, P_world, T_world_cam, seq.calib.camera)
            P_cam = transform_points(invert(T_world_cam), P_world)
            in_img = seq.calib.camera.project(P_cam).in_image
            assert vis.sum() > 5000
            assert not np.any(vis & ~in_img)  # visible points all project inside the image
            assert vis.sum() / in_img.sum() > 0.8  # the LiDAR sees mostly what the camera (8 cm away) sees
        # noise-free points lie on the surfaces: compare with the rendered depth at their pixels
        uv = seq.calib.camera.project(P_cam).uv
        u = np.floor(uv[in_img, 0] + 0.5).astype(int)
        v = np.floor(uv[in_img, 1] + 0.5).astype(int)
        z, d = P_cam[in_img, 2], frame.depth[v, u]
        seen = vis[in_img]
        # visible: the surface rendered at the point's pixel is at the point's depth (silhouette pixels aside)
        assert np.mean(np.abs(d[seen] - z[seen]) < 0.02 * z[seen] + 0.05) > 0.97
        # hidden: the surface rendered there is clearly in front of the point
        if (~seen).sum() > 50:
            assert np.mean(d[~seen] < z[~seen] - 0.05) > 0.9


def test_sim_visibility_constructed_cases(indoor_seq: Path):
    seq = KittiOdometrySequence(indoor_seq)
    tracer = as_tracer(indoor_seq / "world_mesh.npz")
    T = seq.T_world_cam(0)
    cam = seq.calib.camera
    centre, fwd = T[:3, 3], T[:3, 2]
    hit = tracer.cast(centre, fwd[None])
    d = float(hit.t[0])
    assert np.isfinite(d) and d > 1.0
    pts = np.stack(
        [
            centre + fwd * (0.5 * d),  # free space in front of the first surface: visible
            centre + fwd * d,  # on the surface: visible (tol)
            centre + fwd * (d + 1.0),  # behind it: hidden
            centre - fwd * 2.0,  # behind the camera
            [np.nan, 0.0, 0.0],
        ]
    )
    assert visible_points(tracer, pts, T, cam).tolist() == [True, True, False, False, False]
    with pytest.raises(ValueError, match="tol"):
        visible_points(tracer, pts, T, cam, tol=-1.0)


def test_sim_failed_generation_keeps_previous_output(indoor_seq: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "seq"
    shutil.copytree(indoor_seq, out)
    before = _digests(out)
    calls = []
    real_render = writer.SequenceSetup.render

    def failing_render(self, i, noise=True):
        calls.append(i)
        if i == 1:
            raise RuntimeError("renderer crashed")
        return real_render(self, i, noise)

    monkeypatch.setattr(writer.SequenceSetup, "render", failing_render)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        generate_sequence(out, SimConfig(kind="indoor", frames=3, seed=11), progress=False)
    assert calls == [0, 1]  # it failed midway, after frame 0 had been written to the temporary directory
    assert _digests(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["seq"]  # temporary directory removed

    # failing at the very last step (renaming the new sequence in, on a system without atomic exchange): the
    # previous one is put back
    import ep2p_loc_ros.atomic as atomic

    real_rename = os.rename

    def failing_rename(src, dst):
        if ".sim-tmp-" in Path(src).name:
            raise OSError("disk gone")
        return real_rename(src, dst)

    monkeypatch.setattr(writer.SequenceSetup, "render", real_render)
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    monkeypatch.setattr(atomic.os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk gone"):
        generate_sequence(out, SimConfig(kind="indoor", frames=1, seed=11), progress=False)
    assert _digests(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["seq"]
    monkeypatch.undo()
    # and a successful run replaces it
    generate_sequence(out, SimConfig(kind="indoor", frames=1, seed=11), progress=False)
    assert len(KittiOdometrySequence(out)) == 1
    assert json.loads((out / "sim.json").read_text())["seed"] == 11
    assert [p.name for p in tmp_path.iterdir()] == ["seq"]

    # refuses to replace a directory that is not a synthetic sequence
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a synthetic sequence"):
        generate_sequence(precious, INDOOR, progress=False)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_sim_config_rejects_bad_values():
    for kwargs, match in (
        ({"kind": "space"}, "unknown kind"),
        ({"frames": 0}, "frames"),
        ({"speed": -1.0}, "speed"),
        ({"rate_hz": 0.0}, "rate"),
        ({"range_noise": -0.1}, "noise"),
        ({"blocks": 1}, "blocks"),
        ({"azimuth_step_deg": 0.0}, "azimuth"),
    ):
        with pytest.raises(ValueError, match=match):
            SimConfig(**kwargs)


def test_sim_cli_generates_and_reports(tmp_path: Path, capsys):
    out = tmp_path / "cli_seq"
    rc = main(["sim", "--out", str(out), "--frames", "1", "--seed", "5", "--kind", "indoor", "--quiet"])
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert "1 frames" in line and "frames/s" in line and str(out) in line
    seq = KittiOdometrySequence(out)
    assert len(seq) == 1 and seq.image_size == (1241, 376)
    doc = json.loads((out / "sim.json").read_text())
    assert (doc["kind"], doc["seed"]) == ("indoor", 5)
    # same options as the library call -> the same bytes
    lib = tmp_path / "lib_seq"
    generate_sequence(lib, SimConfig(kind="indoor", frames=1, seed=5), progress=False)
    assert _digests(out) == _digests(lib)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "0"], "frames must be >= 1"),
        (["--frames", "2", "--speed", "-3"], "speed must be > 0"),
        (["--frames", "2", "--blocks", "1"], "blocks >= 2"),
        (["--frames", "2", "--threads", "-1"], "--threads"),
    ],
)
def test_sim_cli_bad_values_exit_2(tmp_path: Path, capsys, args: list[str], message: str):
    out = tmp_path / "never"
    assert main(["sim", "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert "ep2p-loc sim: error:" in err and message in err
    assert not out.exists()


def test_sim_cli_bad_usage_exit_2(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sim", "--out", str(tmp_path / "x"), "--frames", "2", "--kind", "underwater"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["sim", "--frames", "2"])  # --out missing
    assert exc.value.code == 2
    # refusing to overwrite a non-sequence directory is an error message, not a traceback
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "a.txt").write_text("x")
    assert main(["sim", "--out", str(keep), "--frames", "1", "--kind", "indoor", "--quiet"]) == 2
    assert "not a synthetic sequence" in capsys.readouterr().err
    assert (keep / "a.txt").read_text() == "x"
