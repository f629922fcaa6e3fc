"""The LiDAR map: building from a generated KITTI-layout sequence, the on-disk format, its validation, retrieval."""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ep2p_loc_ros.datasets.kitti_odometry import KittiOdometrySequence, write_calib, write_poses
from ep2p_loc_ros.errors import DataError
from ep2p_loc_ros.geometry import invert, make_T, rotvec_to_matrix, transform_points
from ep2p_loc_ros.map import (
    LidarMap,
    MapBuildParams,
    MapFormatError,
    Submap,
    build_map,
    compute_features,
    load_map,
    nearest_submaps,
    save_map,
    top_k_by_descriptor,
)
from ep2p_loc_ros.map import cli as map_cli
from ep2p_loc_ros.map import store as map_store
from ep2p_loc_ros.map.builder import VoxelAccumulator, select_viewpoints
from ep2p_loc_ros.map.cli import register

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- a tiny generated sequence

GROUND_Y = 1.6  # world = cam0 of frame 0: x right, y down, z forward
WALL_X = 7.1
STEP = 2.0  # metres driven per frame
N_FRAMES = 8
SCAN_RANGE = 22.0
# LiDAR (x forward, y left, z up) -> rectified cam0 (x right, y down, z forward), mounted 8 cm higher, 27 cm back.
TR = make_T(np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]), [0.0, -0.08, -0.27])


def _world_points(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Points on a ground plane and two walls, 0.6 m apart (no voxel mixes them): surfaces map points lie on."""
    z_lo, z_hi = -15.0, STEP * N_FRAMES + 20.0
    n = 6000
    ground = np.column_stack(
        [rng.uniform(0.6 - WALL_X, WALL_X - 0.6, n), np.full(n, GROUND_Y), rng.uniform(z_lo, z_hi, n)]
    )
    walls = []
    for x in (-WALL_X, WALL_X):
        m = 2500
        walls.append(np.column_stack([np.full(m, x), rng.uniform(-2.0, GROUND_Y - 0.6, m), rng.uniform(z_lo, z_hi, m)]))
    pts = np.concatenate([ground, *walls])
    return pts, rng.uniform(0.0, 1.0, len(pts)).astype(np.float32)


def _pose(i: int) -> np.ndarray:
    """T_world_cam0 of frame i: forward STEP per frame with a slight, varying yaw (about the camera's y axis)."""
    return make_T(rotvec_to_matrix([0.0, 0.03 * np.sin(i), 0.0]), [0.1 * np.sin(i), 0.0, STEP * i])


def _make_sequence(root: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write a KITTI odometry-layout sequence whose scans sample the world surfaces; returns world points."""
    rng = np.random.default_rng(seed)
    for d in ("image_2", "velodyne"):
        (root / d).mkdir(parents=True)
    W, H, f = 64, 32, 40.0
    P = [np.array([[f, 0, W / 2, 0], [0, f, H / 2, 0], [0, 0, 1, 0]], float) for _ in range(4)]
    P[2][0, 3] = 0.06 * f  # cam2 sits 6 cm from cam0, as in KITTI
    write_calib(root / "calib.txt", P, TR)
    poses = np.stack([_pose(i) for i in range(N_FRAMES)])
    write_poses(root / "poses.txt", poses)
    world, refl = _world_points(rng)
    for i in range(N_FRAMES):
        Image.new("RGB", (W, H)).save(root / "image_2" / f"{i:06d}.png")
        velo = transform_points(invert(poses[i] @ TR), world)
        near = np.linalg.norm(velo, axis=1) < SCAN_RANGE
        scan = np.column_stack([velo[near], refl[near]]).astype(np.float32)
        scan.tofile(root / "velodyne" / f"{i:06d}.bin")
    return world, refl


@pytest.fixture(scope="module")
def sequence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seq")
    _make_sequence(root)
    return root


PARAMS = MapBuildParams(voxel=0.5, spacing=5.0, radius=9.0, min_range=1.0)


@pytest.fixture(scope="module")
def built(sequence: Path) -> LidarMap:
    return build_map(sequence, PARAMS, progress=False)


def _random_map(rng: np.random.Generator, n_sub: int = 4, per: int = 50, D: int = 0, Dg: int = 0) -> LidarMap:
    """A small map straight from arrays (no builder): each submap its own block plus the next one's."""
    N = n_sub * per
    offsets = np.zeros(n_sub + 1, np.int64)
    parts = []
    for s in range(n_sub):
        parts.append(np.arange(s * per, min(N, (s + 2) * per)))
        offsets[s + 1] = offsets[s] + len(parts[-1])
    T = np.stack([make_T(rotvec_to_matrix(rng.normal(size=3) * 0.1), [10.0 * s, 0, 0]) for s in range(n_sub)])
    return LidarMap(
        points=rng.normal(size=(N, 3)).astype(np.float32),
        reflectance=rng.uniform(size=N).astype(np.float32),
        features=rng.normal(size=(N, D)).astype(np.float16),
        descriptors=rng.normal(size=(n_sub, Dg)).astype(np.float32),
        T_map_viewpoint=T,
        submap_offsets=offsets,
        submap_indices=np.concatenate(parts),
        viewpoint_frame_ids=np.arange(n_sub, dtype=np.int64) * 3,
        params={"voxel": 0.2, "note": "random"},
    )


# --------------------------------------------------------------------------- building


def test_map_build_fuses_scans_into_voxel_centroids(sequence: Path, built: LidarMap):
    """Every map point is the exact centroid/mean reflectance of one voxel of the fused, range-filtered scans."""
    seq = KittiOdometrySequence(sequence)
    ref: dict[tuple[int, int, int], list] = {}
    for i in range(len(seq)):
        scan = seq.scan(i)
        scan = scan[np.linalg.norm(scan[:, :3], axis=1) >= PARAMS.min_range]
        world = transform_points(seq.T_world_velo(i), scan[:, :3].astype(np.float64))
        for p, r in zip(world, scan[:, 3], strict=True):
            acc = ref.setdefault(tuple(np.floor(p / PARAMS.voxel).astype(int)), [np.zeros(3), 0.0, 0])
            acc[0] += p
            acc[1] += float(r)
            acc[2] += 1
    assert built.num_points == len(ref)
    keys = [tuple(k) for k in np.floor(built.points.astype(np.float64) / PARAMS.voxel).astype(int)]
    assert len(set(keys)) == len(keys)
    expect_p = np.array([ref[k][0] / ref[k][2] for k in keys])
    expect_r = np.array([ref[k][1] / ref[k][2] for k in keys])
    np.testing.assert_allclose(built.points, expect_p, atol=2e-5)
    np.testing.assert_allclose(built.reflectance, expect_r, atol=1e-6)
    assert built.points.dtype == np.float32 and built.reflectance.dtype == np.float32
    # Independent of the builder's pose handling: centroids of surface points lie on the surfaces.
    on_ground = np.abs(built.points[:, 1] - GROUND_Y) < 1e-4
    on_wall = np.abs(np.abs(built.points[:, 0]) - WALL_X) < 1e-4
    assert np.all(on_ground | on_wall)
    assert built.feature_dim == 0 and built.descriptor_dim == 0
    assert built.params["voxel"] == PARAMS.voxel and built.params["radius"] == PARAMS.radius


def test_map_voxel_accumulator_is_independent_of_batching():
    rng = np.random.default_rng(1)
    pts, refl = rng.uniform(-5, 5, (5000, 3)), rng.uniform(size=5000)
    results = []
    for batch in (1, 777, 10**7):
        acc = VoxelAccumulator(1.0, batch_points=batch)
        for chunk in np.array_split(np.arange(5000), 9):
            acc.add(pts[chunk], refl[chunk])
        results.append(acc.result())
    for p, r in results[1:]:
        np.testing.assert_allclose(p, results[0][0], atol=1e-6)
        np.testing.assert_allclose(r, results[0][1], atol=1e-6)


def test_map_viewpoints_every_spacing_metres(sequence: Path, built: LidarMap):
    line = np.column_stack([np.zeros(8), np.zeros(8), 2.0 * np.arange(8)])
    np.testing.assert_array_equal(select_viewpoints(line, 5.0), [0, 3, 6])
    np.testing.assert_array_equal(select_viewpoints(line, 2.0), np.arange(8))
    seq = KittiOdometrySequence(sequence)
    cams = np.stack([seq.T_world_cam(i) for i in range(len(seq))])
    np.testing.assert_array_equal(built.viewpoint_frame_ids, select_viewpoints(cams[:, :3, 3], PARAMS.spacing))
    np.testing.assert_allclose(built.T_map_viewpoint, cams[built.viewpoint_frame_ids])
    assert built.num_submaps == 3


def test_map_submaps_are_exactly_the_points_within_radius(built: LidarMap):
    pts = built.points.astype(np.float64)
    covered = np.zeros(built.num_points, bool)
    for s in range(built.num_submaps):
        c = built.T_map_viewpoint[s, :3, 3]
        expect = np.flatnonzero(np.linalg.norm(pts - c, axis=1) <= PARAMS.radius)
        sub = built.submap(s)
        np.testing.assert_array_equal(sub.point_indices, expect)
        np.testing.assert_array_equal(sub.points, built.points[expect])
        np.testing.assert_array_equal(sub.reflectance, built.reflectance[expect])
        assert sub.features.shape == (len(expect), 0) and sub.descriptor.shape == (0,)
        assert sub.id == s and sub.frame_index == built.viewpoint_frame_ids[s]
        np.testing.assert_allclose(
            sub.points_in_viewpoint(), transform_points(invert(sub.T_map_viewpoint), pts[expect]), atol=1e-5
        )
        covered[expect] = True
        assert len(expect) > 100
    # Rows are ordered by nearest viewpoint: points in no submap come last.
    assert not covered[np.argmin(covered) :].any() or covered.all()
    with pytest.raises(IndexError, match="submap 3 does not exist"):
        built.submap(3)


def _feature_fn(sub: Submap) -> tuple[np.ndarray, np.ndarray]:
    return sub.points_in_viewpoint(), np.random.default_rng(sub.id).normal(size=8)


def test_map_feature_hook_fills_features_and_descriptors(built: LidarMap, tmp_path: Path):
    fm = compute_features(built, _feature_fn, progress=False)
    assert fm.feature_dim == 3 and fm.descriptor_dim == 8 and fm.features.dtype == np.float16
    pts = built.points.astype(np.float64)
    centres = built.T_map_viewpoint[:, :3, 3]
    members = np.zeros((built.num_points, built.num_submaps), bool)
    for s in range(built.num_submaps):
        members[built.submap_point_indices(s), s] = True
    dist = np.where(members, np.linalg.norm(pts[:, None, :] - centres[None], axis=2), np.inf)
    owner = np.argmin(dist, axis=1)
    for s in range(built.num_submaps):
        rows = np.flatnonzero(members.any(axis=1) & (owner == s))
        local = transform_points(invert(built.T_map_viewpoint[s]), pts[rows])
        np.testing.assert_allclose(fm.features[rows].astype(np.float64), local, atol=0.02)
        np.testing.assert_allclose(fm.descriptors[s], np.random.default_rng(s).normal(size=8).astype(np.float32))
    assert not fm.features[~members.any(axis=1)].any()
    loaded = load_map(save_map(built, tmp_path / "m"))
    # A model applied later to a loaded (memory-mapped) map, saved over the map it was read from.
    loaded = load_map(save_map(compute_features(loaded, _feature_fn, progress=False), tmp_path / "m"))
    np.testing.assert_array_equal(loaded.features, fm.features)
    ids, sims = top_k_by_descriptor(loaded, loaded.descriptors[1] + 0.01, k=2)
    assert ids[0] == 1 and sims[0] > 0.99 and len(ids) == 2
    with pytest.raises(ValueError, match="D=2"):
        compute_features(built, lambda sub: (np.zeros((len(sub), 2 + sub.id)), np.zeros(4)), progress=False)


# --------------------------------------------------------------------------- format


def test_map_roundtrip_save_load_is_exact_and_memory_mapped(built: LidarMap, tmp_path: Path):
    out = save_map(built, tmp_path / "map")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "ep2p-loc-map" and manifest["format_version"] == 1 and manifest["frame_id"] == "map"
    assert manifest["created_by"].startswith("ep2p_loc_ros ")
    assert manifest["arrays"]["submap_indices"]["dtype"] == "<i4"
    for name, entry in manifest["arrays"].items():
        data = (out / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
    loaded = load_map(out)
    for name, arr in built.arrays().items():
        got = getattr(loaded, name)
        assert isinstance(got, np.memmap) and not got.flags.writeable, name
        np.testing.assert_array_equal(got, arr, err_msg=name)
    assert loaded.params == built.params and loaded.frame_id == "map" and loaded.path == out
    for s in range(built.num_submaps):
        a, b = built.submap(s), loaded.submap(s)
        for field in ("points", "reflectance", "features", "descriptor", "point_indices", "T_map_viewpoint"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
        assert b.points.flags.writeable  # gathered copies, not views of the memory map


def test_map_retrieval_nearest_and_descriptor_errors(built: LidarMap):
    target = built.T_map_viewpoint[2, :3, 3] + [0.5, 0.0, -0.5]
    ids, d = nearest_submaps(built, target, k=2)
    assert ids.tolist() == [2, 1] and d[0] == pytest.approx(np.sqrt(0.5))
    ids_pose, _ = nearest_submaps(built, make_T(np.eye(3), target), k=10)
    assert ids_pose.tolist()[:2] == [2, 1] and len(ids_pose) == built.num_submaps
    with pytest.raises(ValueError, match="no global descriptors"):
        top_k_by_descriptor(built, np.zeros(8), k=1)
    m = _random_map(np.random.default_rng(0), Dg=4)
    with pytest.raises(ValueError, match="query has 3 dimensions"):
        top_k_by_descriptor(m, np.ones(3))


def test_map_replace_is_atomic_and_refuses_foreign_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rng = np.random.default_rng(2)
    a, b = _random_map(rng), _random_map(rng, n_sub=6, D=4, Dg=2)
    path = tmp_path / "map"
    save_map(a, path)
    save_map(b, path)  # renameat2(RENAME_EXCHANGE) on Linux
    assert load_map(path).num_submaps == 6
    import ep2p_loc_ros.atomic as atomic

    monkeypatch.setattr(atomic, "exchange", lambda x, y: False)  # the two-rename fallback
    save_map(a, path)
    assert load_map(path).num_submaps == 4
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map"]  # no temp or old directories left

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    real = map_store._write_array
    monkeypatch.setattr(map_store, "_write_array", failing)
    with pytest.raises(OSError, match="simulated"):
        save_map(b, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(load_map(path).points, a.points)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map"]

    with pytest.raises(FileExistsError, match="overwrite"):
        save_map(b, path, overwrite=False)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(FileExistsError, match="not an ep2p-loc-map map directory"):
        save_map(a, foreign)
    assert (foreign / "cat.jpg").read_bytes() == b"meow"


def test_map_replace_killed_midway_leaves_old_map(tmp_path: Path):
    """SIGKILL while the new map is half written: the old map is still there, whole and valid."""
    path, new = tmp_path / "map", tmp_path / "new"
    old = _random_map(np.random.default_rng(3))
    save_map(old, path)
    save_map(_random_map(np.random.default_rng(4), n_sub=7), new)
    script = textwrap.dedent(
        f"""
        import os, signal
        from ep2p_loc_ros.map import store
        real, n = store._write_array, []
        def write_then_die(*a, **k):
            n.append(1)
            if len(n) == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        store._write_array = write_then_die
        store.save_map(store.load_map({str(new)!r}), {str(path)!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    loaded = load_map(path)
    assert loaded.num_submaps == 4
    np.testing.assert_array_equal(loaded.points, old.points)
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("map", "new"))
    assert len(leftovers) == 1 and leftovers[0].startswith(".map.tmp-")  # the abandoned half-written copy


def test_map_cli_build_map(
    sequence: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    parser = argparse.ArgumentParser(prog="ep2p-loc")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli-map"
    opts = ["--voxel", "0.5", "--spacing", "5", "--radius", "9", "--min-range", "1", "--quiet"]
    args = parser.parse_args(["build-map", str(sequence), "--out", str(out), *opts])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "submaps 3" in printed
    # Not a synthetic sequence, and its scans (a 14 m wide street cut off at 22 m) see neither far nor near enough.
    assert "environment: unknown (scan ranges: scans see 16.8 m (median of 8), between 15 and 40 m" in printed
    loaded = load_map(out)
    assert loaded.params["spacing"] == 5.0 and loaded.params["sequence"] == str(sequence.resolve())
    assert loaded.feature_dim == 0 and loaded.params["feature_model"] is None
    assert loaded.params["environment"] == "unknown"
    args = parser.parse_args(["build-map", str(sequence), "--out", str(out), *opts, "--environment", "indoor"])
    assert args.func(args) == 0 and load_map(out).params["environment"] == "indoor"
    assert "environment: indoor (given)" in capsys.readouterr().out
    # --model loads the model first: a missing model is a DataError naming its config, and nothing is written.
    args = parser.parse_args(["build-map", str(sequence), "--out", str(tmp_path / "x"), "--model", "m", "--quiet"])
    with pytest.raises(DataError, match=r"m/config\.json: cannot read model config"):
        args.func(args)
    assert not (tmp_path / "x").exists()
    monkeypatch.setattr(map_cli, "_load_feature_fn", lambda model_dir, seq_dir: _feature_fn)
    args = parser.parse_args(["build-map", str(sequence), "--out", str(out), "--model", "m", *opts])
    assert args.func(args) == 0
    loaded = load_map(out)  # replaced the map built without features
    assert loaded.feature_dim == 3 and loaded.descriptor_dim == 8
    assert loaded.params["feature_model"] == str(Path("m").resolve())


def test_map_build_requires_poses(sequence: Path, tmp_path: Path):
    import shutil

    seq = tmp_path / "seq"
    shutil.copytree(sequence, seq)
    (seq / "poses.txt").unlink()
    with pytest.raises(DataError, match=r"no poses\.txt"):
        build_map(seq, PARAMS, progress=False)
    with pytest.raises(ValueError, match="radius must be > 0"):
        MapBuildParams(radius=0)


# --------------------------------------------------------------------------- rejection of bad maps


@pytest.fixture
def good_map(tmp_path: Path) -> Path:
    return save_map(_random_map(np.random.default_rng(5), D=4, Dg=3), tmp_path / "map")


def _edit_manifest(root: Path, edit) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def _rewrite_array(root: Path, name: str, arr: np.ndarray, *, update_manifest: bool = True, **save_kw) -> Path:
    """Replace one array file; with ``update_manifest`` the manifest agrees (so a deeper check must catch it)."""
    path = root / f"{name}.npy"
    np.save(path, arr, **save_kw)

    def edit(m: dict) -> None:
        m["arrays"][name].update(
            dtype=arr.dtype.str, shape=list(arr.shape), sha256=hashlib.sha256(path.read_bytes()).hexdigest()
        )

    if update_manifest:
        _edit_manifest(root, edit)
    return path


def _rejects(root: Path, file: Path, *faults: str) -> MapFormatError:
    with pytest.raises(MapFormatError) as info:
        load_map(root)
    msg = str(info.value)
    assert str(file) in msg, msg
    for fault in faults:
        assert fault in msg, msg
    assert isinstance(info.value, DataError)
    return info.value


def test_map_rejects_missing_manifest(good_map: Path):
    (good_map / "manifest.json").unlink()
    _rejects(good_map, good_map / "manifest.json", "missing")


def test_map_rejects_manifest_not_json(good_map: Path):
    (good_map / "manifest.json").write_text('{"format": "ep2p-loc-map", ')
    _rejects(good_map, good_map / "manifest.json", "not valid JSON")


def test_map_rejects_wrong_format_name(good_map: Path):
    _edit_manifest(good_map, lambda m: m.update(format="pcd-map"))
    _rejects(good_map, good_map / "manifest.json", "wrong format name 'pcd-map'")


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_map_rejects_unsupported_version(good_map: Path, version):
    _edit_manifest(good_map, lambda m: m.update(format_version=version))
    err = _rejects(good_map, good_map / "manifest.json", f"unsupported format_version {version!r}")
    assert ("upgrade" in str(err)) == (version == 2)


def test_map_rejects_missing_array_file(good_map: Path):
    (good_map / "features.npy").unlink()
    _rejects(good_map, good_map / "features.npy", "array file missing")


def test_map_rejects_array_file_outside_the_map(good_map: Path):
    _edit_manifest(good_map, lambda m: m["arrays"]["points"].update(file="../points.npy"))
    _rejects(good_map, good_map / "manifest.json", "must be a plain '*.npy' name")


def test_map_rejects_dtype_mismatch(good_map: Path):
    pts = np.load(good_map / "points.npy")
    path = _rewrite_array(good_map, "points", pts.astype(np.float64), update_manifest=False)
    _rejects(good_map, path, "dtype <f8 does not match the manifest (<f4)")
    _edit_manifest(good_map, lambda m: m["arrays"]["points"].update(dtype="<f8"))
    _rejects(good_map, good_map / "manifest.json", "dtype '<f8' not allowed")


def test_map_rejects_shape_mismatch(good_map: Path):
    pts = np.load(good_map / "points.npy")
    path = _rewrite_array(good_map, "points", pts[:-1], update_manifest=False)
    _rejects(good_map, path, "shape (199, 3) does not match the manifest ((200, 3))")


def test_map_rejects_arrays_that_disagree(good_map: Path):
    refl = np.load(good_map / "reflectance.npy")
    _rewrite_array(good_map, "reflectance", refl[:-5])  # file and manifest agree, but not with points
    _rejects(good_map, good_map / "manifest.json", "'reflectance'", "shape (195,) does not match the map")


def test_map_rejects_checksum_mismatch(good_map: Path):
    path = good_map / "features.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    _rejects(good_map, path, "sha256 mismatch", "corrupt or modified")


def test_map_rejects_truncated_file(good_map: Path):
    path = good_map / "points.npy"
    path.write_bytes(path.read_bytes()[:-100])
    _rejects(good_map, path, "truncated")
    path.write_bytes(b"\x93NUMPY garbage")
    _rejects(good_map, path, "not a readable .npy file")


def test_map_rejects_non_monotonic_offsets(good_map: Path):
    offsets = np.load(good_map / "submap_offsets.npy")
    offsets[2] = offsets[1] - 1
    path = _rewrite_array(good_map, "submap_offsets", offsets)
    _rejects(good_map, path, "CSR offsets not monotonic")
    offsets = np.load(good_map / "submap_offsets.npy")
    offsets[2] = offsets[1] + 1  # monotonic again, but the end no longer matches the indices
    offsets[-1] += 1
    path = _rewrite_array(good_map, "submap_offsets", offsets)
    _rejects(good_map, path, "CSR offsets end at")


@pytest.mark.parametrize("bad", [-1, 200])
def test_map_rejects_out_of_range_indices(good_map: Path, bad: int):
    idx = np.load(good_map / "submap_indices.npy")
    idx[7] = bad
    path = _rewrite_array(good_map, "submap_indices", idx)
    _rejects(good_map, path, "CSR index out of range", "200 points")


def test_map_rejects_nan_points(good_map: Path):
    pts = np.load(good_map / "points.npy")
    pts[11, 1] = np.nan
    path = _rewrite_array(good_map, "points", pts)
    _rejects(good_map, path, "NaN/Inf", "flat element 34")


class _Payload:
    """Unpickling this creates the sentinel file: proof that the loader unpickled."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_map_rejects_pickled_object_array(good_map: Path, tmp_path: Path):
    sentinel = tmp_path / "unpickled"
    arr = np.empty(200, dtype=object)
    arr[:] = [_Payload(str(sentinel))] * 200
    path = _rewrite_array(good_map, "reflectance", arr, allow_pickle=True)  # manifest: dtype |O, sha matches
    _rejects(good_map, good_map / "manifest.json", "dtype '|O' not allowed")
    _edit_manifest(good_map, lambda m: m["arrays"]["reflectance"].update(dtype="<f4"))  # the manifest lies
    _rejects(good_map, path, "Python-object (pickled) array", "refused without unpickling")
    assert not sentinel.exists()


def test_map_save_refuses_invalid_maps(tmp_path: Path):
    m = _random_map(np.random.default_rng(6))
    m.points[3, 0] = np.inf
    with pytest.raises(MapFormatError, match="points: contains NaN/Inf"):
        save_map(m, tmp_path / "bad")
    with pytest.raises(MapFormatError, match="reflectance: shape"):
        LidarMap(**{**_random_map(np.random.default_rng(6)).arrays(), "reflectance": np.zeros(3, np.float32)})
    assert not (tmp_path / "bad").exists()


def test_map_environment_comes_from_a_synthetic_sequence_or_the_builder(sequence: Path, tmp_path: Path):
    """A synthetic sequence's sim.json says where it is ("auto"); an explicit environment wins; others refused."""
    import shutil
    from dataclasses import replace

    sim = tmp_path / "sim-seq"
    shutil.copytree(sequence, sim)
    (sim / "sim.json").write_text(json.dumps({"kind": "indoor"}))
    assert build_map(sim, PARAMS, progress=False).params["environment"] == "indoor"
    outdoor = replace(PARAMS, environment="outdoor")
    assert build_map(sim, outdoor, progress=False).params["environment"] == "outdoor"
    (sim / "sim.json").write_text("{not json")
    assert build_map(sim, PARAMS, progress=False).params["environment"] == "unknown"
    with pytest.raises(ValueError, match="environment must be one of"):
        MapBuildParams(environment="underwater")


def _without_sim_json(seq: Path, root: Path) -> Path:
    """The sequence as a recording would have it: the same files, linked, but no sim.json to say where it is."""
    root.mkdir()
    for item in seq.iterdir():
        if item.name != "sim.json":
            (root / item.name).symlink_to(item.resolve())
    return root


def test_scan_openness_tells_rooms_from_streets(kitti_frames):
    """Real KITTI scans see far (outdoor); a room's walls bound every direction (indoor); a narrow view says nothing."""
    from ep2p_loc_ros.map.environment import environment_from_openness, scan_openness

    street = [scan_openness(frame.scan) for frame in kitti_frames]
    assert all(v >= 40.0 for v in street), street
    assert environment_from_openness(street)[0] == "outdoor"

    rng = np.random.default_rng(3)  # a 6 x 9 m room, 3 m high, the sensor 1.2 m above the floor, off its centre
    u = rng.uniform(0, 1, (20000, 2))
    walls = np.concatenate(
        [np.column_stack([np.full(5000, x), -4.0 + 9.0 * u[:5000, 0], -1.2 + 3.0 * u[:5000, 1]]) for x in (-2.0, 4.0)]
        + [np.column_stack([-2.0 + 6.0 * u[:5000, 0], np.full(5000, y), -1.2 + 3.0 * u[:5000, 1]]) for y in (-4.0, 5.0)]
    )
    room = scan_openness(walls)
    assert 4.0 < room < 7.0, room  # the far corners are 6.4 m away
    assert environment_from_openness([room, room, float("nan")]) == (
        "indoor",
        f"scans see {room:.1f} m (median of 2) <= 15 m",
    )
    # Only points far above or below the horizontal plane, or a sensor seeing a few degrees: no verdict.
    assert np.isnan(scan_openness(walls[np.abs(walls[:, 2]) > 1.0]))
    assert np.isnan(scan_openness(walls[(walls[:, 0] > 3.9) & (np.abs(walls[:, 1]) < 0.5)]))
    assert environment_from_openness([float("nan")])[0] == "unknown"
    assert environment_from_openness([20.0, 25.0, 30.0]) == (
        "unknown",
        "scans see 25.0 m (median of 3), between 15 and 40 m: pass --environment",
    )
    assert environment_from_openness([]) == ("unknown", "no scan has near-horizontal returns in enough directions")


def test_map_environment_from_scan_ranges_when_the_sequence_does_not_say(demo_data, tmp_path: Path):
    """The demo drives without their sim.json: the builder tells indoor from outdoor by how far the scans see."""
    from dataclasses import replace

    from ep2p_loc_ros.demo_data import DEMO_SIMS, ensure_demo_data

    indoor = ensure_demo_data(sim=DEMO_SIMS["indoor"], progress=False)
    params = replace(PARAMS, voxel=0.4, spacing=20.0, radius=20.0, scan_stride=5)
    for expected, data in (("outdoor", demo_data), ("indoor", indoor)):
        recorded = _without_sim_json(data.sequence_dir, tmp_path / expected)
        built = build_map(recorded, params, progress=False).params
        assert built["environment"] == expected, built["environment_source"]
        assert built["environment_source"].startswith("scan ranges: scans see ")
        given = build_map(recorded, replace(params, environment="unknown"), progress=False).params
        assert (given["environment"], given["environment_source"]) == ("unknown", "given")
    assert build_map(data.sequence_dir, params, progress=False).params["environment_source"] == "sim.json"
