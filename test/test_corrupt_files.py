"""Corrupt map and model files are refused when the node is configured, and the node recovers once they are fixed.

One node process (``ep2p-loc node``, the real Localizer) over DDS, with its map and model in a temporary copy.
Each case breaks one file, asks for ``configure``, and checks: the transition fails; the log and /diagnostics
(level ERROR) name the file and the fault; no traceback; the node stays ``unconfigured`` and alive. Then the
file is put back and ``configure`` succeeds (and ``cleanup`` returns to unconfigured for the next case).
``load_map``'s own checks are covered in depth in test_map.py; these are the faults as the node meets them.
A pickled payload that would create a file when unpickled proves that no code path unpickles.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not generated (scripts/build_tf2_msgs.sh)")

import ros_helpers as rh
from diagnostic_msgs.msg import DiagnosticArray


class _Payload:
    """Unpickling this creates the sentinel file: proof that something unpickled."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _flip(path: Path, offset_from_end: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x5A
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _pickled_npy(m: Path, sentinel: Path) -> None:
    """reflectance.npy becomes an object array of payloads; the manifest keeps saying <f4 (it lies)."""
    arr = np.empty(int(json.loads((m / "manifest.json").read_text())["arrays"]["reflectance"]["shape"][0]), object)
    arr[:] = [_Payload(str(sentinel))] * len(arr)
    np.save(m / "reflectance.npy", arr, allow_pickle=True)
    sha = hashlib.sha256((m / "reflectance.npy").read_bytes()).hexdigest()
    _edit_json(m / "manifest.json", lambda d: d["arrays"]["reflectance"].update(sha256=sha))


def _wrong_shape_npy(m: Path) -> None:
    pts = np.load(m / "points.npy")
    np.save(m / "points.npy", pts[:-1])


def _pickle_as_weights(model: Path, sentinel: Path) -> None:
    import pickle

    (model / "model.safetensors").write_bytes(pickle.dumps({"w": _Payload(str(sentinel))}))


def _weights_wrong_shape(model: Path) -> None:
    from safetensors.numpy import load_file, save_file

    state = load_file(str(model / "model.safetensors"))
    name = sorted(k for k, v in state.items() if v.ndim == 2)[0]
    state[name] = np.ascontiguousarray(state[name][:, :-1])
    save_file(state, str(model / "model.safetensors"))


def _weights_nan(model: Path) -> None:
    from safetensors.numpy import load_file, save_file

    state = load_file(str(model / "model.safetensors"))
    name = sorted(state)[0]
    state[name] = state[name].copy()
    state[name].flat[0] = np.nan
    save_file(state, str(model / "model.safetensors"))


def _safetensors_bad_header(model: Path) -> None:
    path = model / "model.safetensors"
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(struct.pack("<Q", n + 1000) + data[8:])


def _rehashed(corrupt):
    """Corrupt a model file, then record its new sha256 in config.json (as a buggy exporter would): the loader's
    deeper checks (format, shapes, NaN, ONNX contract) must still catch it."""

    def run(map_dir: Path, model_dir: Path, sentinel: Path) -> None:
        corrupt(map_dir, model_dir, sentinel)
        cfg = json.loads((model_dir / "config.json").read_text())
        for name in cfg["files"]:
            cfg["files"][name] = hashlib.sha256((model_dir / name).read_bytes()).hexdigest()
        (model_dir / "config.json").write_text(json.dumps(cfg))

    return run


# (id, which file (relative to the map or model dir), corrupt(map_dir, model_dir, sentinel), fault text)
CASES = [
    ("map-manifest-truncated", "map/manifest.json", lambda m, _, s: _truncate(m / "manifest.json"), "not valid JSON"),
    (
        "map-wrong-version",
        "map/manifest.json",
        lambda m, _, s: _edit_json(m / "manifest.json", lambda d: d.update(format_version=99)),
        "unsupported format_version 99",
    ),
    ("map-npy-truncated", "map/points.npy", lambda m, _, s: _truncate(m / "points.npy", 0.9), "truncated"),
    ("map-wrong-checksum", "map/features.npy", lambda m, _, s: _flip(m / "features.npy"), "sha256 mismatch"),
    ("map-wrong-shape", "map/points.npy", lambda m, _, s: _wrong_shape_npy(m), "does not match the manifest"),
    ("map-npy-pickled", "map/reflectance.npy", lambda m, _, s: _pickled_npy(m, s), "Python-object (pickled)"),
    ("map-missing", "map", lambda m, _, s: shutil.rmtree(m), "not a map directory"),
    ("model-config-truncated", "model/config.json", lambda _, d, s: _truncate(d / "config.json"), "cannot read"),
    (
        "model-wrong-version",
        "model/config.json",
        lambda _, d, s: _edit_json(d / "config.json", lambda c: c.update(format_version=7)),
        "format_version 7 is not supported",
    ),
    (
        "model-weights-wrong-checksum",
        "model/model.safetensors",
        lambda _, d, s: _flip(d / "model.safetensors"),
        "does not match config.json",
    ),
    (
        "model-weights-truncated",
        "model/model.safetensors",
        _rehashed(lambda _, d, s: _truncate(d / "model.safetensors")),
        "cannot read weights",
    ),
    (
        "model-weights-bad-header",
        "model/model.safetensors",
        _rehashed(lambda _, d, s: _safetensors_bad_header(d)),
        "cannot read weights",
    ),
    (
        "model-weights-wrong-shape",
        "model/model.safetensors",
        _rehashed(lambda _, d, s: _weights_wrong_shape(d)),
        "has shape",
    ),
    ("model-weights-nan", "model/model.safetensors", _rehashed(lambda _, d, s: _weights_nan(d)), "NaN/Inf"),
    (
        "model-weights-pickled",
        "model/model.safetensors",
        _rehashed(lambda _, d, s: _pickle_as_weights(d, s)),
        "cannot read weights",
    ),
    (
        "model-onnx-truncated",
        "model/image_encoder.onnx",
        _rehashed(lambda _, d, s: _truncate(d / "image_encoder.onnx")),
        "not a valid ONNX model",
    ),
    (
        "model-onnx-wrong-config",
        "model/image_encoder.onnx",
        _rehashed(lambda _, d, s: shutil.copy(d / "config.json", d / "image_encoder.onnx")),
        "not a valid ONNX model",
    ),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from ep2p_loc_ros.demo_data import ensure_demo_data

    demo = ensure_demo_data(progress=False)
    root = tmp_path_factory.mktemp("corrupt")
    pristine = {"map": demo.map_dir, "model": demo.model_dir}
    for name, src in pristine.items():
        shutil.copytree(src, root / name)
    return root, pristine


@pytest.fixture(scope="module")
def node(files, tmp_path_factory):
    root, _ = files
    params = {"map_path": str(root / "map"), "model_path": str(root / "model"), "map_cloud_max_points": 0}
    proc = rh.start_node(params, log_dir=tmp_path_factory.mktemp("corrupt_node"))
    ros = rh.RosSession("ep2p_corrupt_test")
    diags = ros.collect(DiagnosticArray, "/diagnostics")
    lc = rh.LifecycleClient(ros.node)
    try:
        assert lc.wait_ready(60), proc.log()
        yield proc, lc, diags
    finally:
        ros.close()
        rc = proc.stop()
        assert rc == 0 and "Traceback" not in proc.log(), proc.log()


def _restore(root: Path, pristine: dict[str, Path], which: str) -> None:
    shutil.rmtree(root / which, ignore_errors=True)
    shutil.copytree(pristine[which], root / which)


def test_corrupt_model_weights_bit_flip_is_refused(files, tmp_path):
    from ep2p_loc_ros.model.network import load_network

    _, pristine = files
    model = tmp_path / "model"
    shutil.copytree(pristine["model"], model)
    data = bytearray((model / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01  # lowest mantissa bit of some weight: still finite
    (model / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 .* corrupt"):
        load_network(model)
    # the ONNX file is checked the same way before a session is made from it
    from ep2p_loc_ros.model.network import ONNX_FILE, verify_model_file

    onnx = bytearray((model / ONNX_FILE).read_bytes())
    onnx[len(onnx) // 2] ^= 0x01
    (model / ONNX_FILE).write_bytes(bytes(onnx))
    with pytest.raises(ValueError, match=r"image_encoder\.onnx: sha256"):
        verify_model_file(model, ONNX_FILE)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_corrupt_file_is_refused_at_configure_and_node_recovers(case, files, node, tmp_path):
    name, rel, corrupt, fault = case
    root, pristine = files
    proc, lc, diags = node
    sentinel = tmp_path / "unpickled"
    assert lc.get_state() == "unconfigured"
    corrupt(root / "map", root / "model", sentinel)
    log_before, n_diag = len(proc.log()), len(diags.messages())
    t0 = time.perf_counter()
    assert not lc.configure(), f"{name}: configure succeeded with a corrupt {rel}"
    refused_s = time.perf_counter() - t0
    log = proc.log()[log_before:]
    line = next((ln for ln in log.splitlines() if "configure failed" in ln), "")
    assert str(root / rel) in line and fault in line, f"{name}: {line or log}"
    assert "Traceback" not in log
    got = rh.RosSession.wait_for(
        lambda: [v for m in diags.messages()[n_diag:] if (v := rh.diag_values(m)) and v["level"] == "2"], 5
    )
    assert got and fault in got[-1]["message"] and str(root / rel) in got[-1]["message"], got
    assert lc.get_state() == "unconfigured" and proc.alive
    assert not sentinel.exists(), f"{name}: something unpickled the payload"
    # fix the file: the same node configures, and goes back to unconfigured for the next case
    _restore(root, pristine, rel.split("/")[0])
    assert lc.configure(), f"{name}: configure after the fix failed\n{proc.log()[-2000:]}"
    assert lc.get_state() == "inactive"
    assert lc.cleanup() and lc.get_state() == "unconfigured"
    print(f"\n{name}: refused in {refused_s * 1e3:.0f} ms: {line.split('configure failed: ', 1)[-1][:160]}")
