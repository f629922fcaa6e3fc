"""ONNX export of the image encoder and its onnxruntime session: parity with torch, validation of bad files."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from ep2p_loc_ros.calib import read_kitti_object_calib
from ep2p_loc_ros.errors import DataError
from ep2p_loc_ros.model.config import ModelConfig
from ep2p_loc_ros.model.export import (
    META_CONFIG,
    META_FORMAT,
    ONNX_FORMAT_VERSION,
    expected_io_shapes,
    export_image_encoder,
)
from ep2p_loc_ros.model.image_encoder import ImageEncoder
from ep2p_loc_ros.model.preprocess import prepare_image

ort = pytest.importorskip("onnxruntime")

from test_image_encoder import randomise_batchnorm  # noqa: E402

from ep2p_loc_ros.runtime import CPU, CUDA, ImageEncoderSession, read_onnx_config  # noqa: E402

KITTI_OBJECT = Path(__file__).parent / "data" / "kitti_object"
PARITY_ATOL = 1e-4
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageEncoder, ModelConfig, Path]:
    torch.manual_seed(0)
    config = ModelConfig()
    model = ImageEncoder(config).eval()
    randomise_batchnorm(model)
    with torch.no_grad():
        model.gem.p.fill_(2.5)
    path = export_image_encoder(model, config, tmp_path_factory.mktemp("onnx") / "image_encoder.onnx")
    return model, config, path


@pytest.fixture(scope="module")
def session(exported: tuple[ImageEncoder, ModelConfig, Path]) -> ImageEncoderSession:
    _, config, path = exported
    return ImageEncoderSession(path, config, providers="cpu", intra_op_threads=2)


def assert_parity(model: ImageEncoder, session: ImageEncoderSession, image: np.ndarray) -> None:
    with torch.no_grad():
        ref_patch, ref_global = (t.numpy() for t in model(torch.from_numpy(image)))
    patch, global_ = session.run(image)
    assert patch.shape == ref_patch.shape and global_.shape == ref_global.shape
    assert np.abs(patch - ref_patch).max() <= PARITY_ATOL
    assert np.abs(global_ - ref_global).max() <= PARITY_ATOL


# --------------------------------------------------------------------------- export


def test_export_writes_checked_onnx_with_metadata(exported: tuple[ImageEncoder, ModelConfig, Path]) -> None:
    model, config, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["patch_features", "global_descriptor"]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert tuple(dims) == expected_io_shapes(config)["image"] == (1, 3, 192, 640)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta[META_FORMAT] == str(ONNX_FORMAT_VERSION)
    assert ModelConfig.from_json(json.loads(meta[META_CONFIG])) == config
    assert read_onnx_config(path) == config
    # BatchNorm is folded into the convolutions: the deployed graph has none.
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    assert path.stat().st_size < 30e6
    assert not model.training  # the fixture's model was in eval mode and stays so


def test_export_restores_training_mode_and_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = ModelConfig(image_height=64, image_width=128)
    model = ImageEncoder(config).train()
    path = export_image_encoder(model, config, tmp_path / "m.onnx")
    assert model.training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary files left behind
    before = path.read_bytes()

    def failing_check(*args: object, **kwargs: object) -> None:
        raise onnx.checker.ValidationError("simulated failure")

    monkeypatch.setattr(onnx.checker, "check_model", failing_check)
    with pytest.raises(onnx.checker.ValidationError):
        export_image_encoder(ImageEncoder(config), config, path)
    assert path.read_bytes() == before  # the old file is untouched by a failed export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    with pytest.raises(ValueError, match="different ModelConfig"):
        export_image_encoder(model, ModelConfig(), tmp_path / "other.onnx")


def test_export_parity_random_inputs(
    exported: tuple[ImageEncoder, ModelConfig, Path], session: ImageEncoderSession
) -> None:
    model, config, _ = exported
    rng = np.random.default_rng(0)
    shape = expected_io_shapes(config)["image"]
    for image in (rng.random(shape, dtype=np.float32), np.zeros(shape, np.float32), np.ones(shape, np.float32)):
        assert_parity(model, session, image)


def test_export_parity_real_kitti_image(
    exported: tuple[ImageEncoder, ModelConfig, Path], session: ImageEncoderSession
) -> None:
    model, config, _ = exported
    rgb = np.asarray(Image.open(KITTI_OBJECT / "image_2" / "000000.png").convert("RGB"))
    calib = read_kitti_object_calib(KITTI_OBJECT / "calib" / "000000.txt", (rgb.shape[1], rgb.shape[0]))
    image, _ = prepare_image(rgb, calib.camera, config)
    assert_parity(model, session, image)


# --------------------------------------------------------------------------- runtime


def test_runtime_picks_cpu_here_and_reports_it(
    exported: tuple[ImageEncoder, ModelConfig, Path], caplog: pytest.LogCaptureFixture
) -> None:
    _, config, path = exported
    if CUDA in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with caplog.at_level(logging.INFO, logger="ep2p_loc_ros.runtime"):
        session = ImageEncoderSession(path, config, providers="auto", intra_op_threads=2)
    assert session.provider == CPU and session.device == "cpu"
    assert session.config == config and session.intra_op_threads == 2
    assert any(CPU in r.getMessage() and "2 intra-op threads" in r.getMessage() for r in caplog.records)
    quiet = ImageEncoderSession(path, intra_op_threads=1, allow_spinning=False)
    assert quiet.config == config  # config=None: taken from the file
    assert quiet.run(np.zeros((1, 3, 192, 640), np.float32))[0].shape == (1, 64, 24, 80)
    with pytest.raises(RuntimeError, match=r"\.\[gpu\]"):
        ImageEncoderSession(path, config, providers="cuda")


def test_runtime_falls_back_to_cpu_when_cuda_session_fails(
    exported: tuple[ImageEncoder, ModelConfig, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _, config, path = exported
    real = ort.InferenceSession

    def fake_session(model_path: str, sess_options: object = None, providers: list | None = None) -> object:
        if providers and CUDA in providers:
            raise RuntimeError("CUDA failure: no CUDA-capable device is detected")
        return real(model_path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", fake_session)
    with caplog.at_level(logging.WARNING, logger="ep2p_loc_ros.runtime"):
        session = ImageEncoderSession(path, config, providers="auto", intra_op_threads=1)
    assert session.provider == CPU
    assert any("falling back to CPU" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_runtime_run_checks_its_input(session: ImageEncoderSession) -> None:
    with pytest.raises(DataError, match=r"shape \(1, 3, 192, 640\)"):
        session.run(np.zeros((1, 3, 96, 320), np.float32))
    with pytest.raises(DataError, match="float32"):
        session.run(np.zeros((1, 3, 192, 640), np.uint8))
    patch, global_ = session.run(np.full((1, 3, 192, 640), 0.5))  # float64 is converted
    assert patch.dtype == np.float32 and global_.shape == (1, 128)


def _rename_input(src: Path, dst: Path) -> None:
    proto = onnx.load(str(src))
    proto.graph.input[0].name = "input"
    for node in proto.graph.node:
        node.input[:] = ["input" if n == "image" else n for n in node.input]
    onnx.save(proto, str(dst))


def _lying_metadata(src: Path, dst: Path) -> None:
    """A valid model whose metadata claims another input size than its graph has."""
    proto = onnx.load(str(src))
    for prop in proto.metadata_props:
        if prop.key == META_CONFIG:
            prop.value = json.dumps(ModelConfig(image_height=96, image_width=320).to_json())
    onnx.save(proto, str(dst))


def _no_metadata(src: Path, dst: Path) -> None:
    proto = onnx.load(str(src))
    del proto.metadata_props[:]
    onnx.save(proto, str(dst))


def _old_format(src: Path, dst: Path) -> None:
    proto = onnx.load(str(src))
    for prop in proto.metadata_props:
        if prop.key == META_FORMAT:
            prop.value = "0"
    onnx.save(proto, str(dst))


BAD_FILES = {
    "missing": (lambda src, dst: None, "not found"),
    "truncated": (
        lambda src, dst: dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2]),
        "truncated or corrupt",
    ),
    "random_bytes": (
        lambda src, dst: dst.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()),
        "not a valid ONNX",
    ),
    "empty": (lambda src, dst: dst.write_bytes(b""), "not a valid ONNX"),
    "wrong_input_name": (_rename_input, "expected one input 'image'"),
    "metadata_lies": (_lying_metadata, "has shape"),
    "no_metadata": (_no_metadata, "not an EP2P-Loc image encoder"),
    "old_format": (_old_format, "format version '0' is not supported"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_runtime_rejects_bad_file(exported: tuple[ImageEncoder, ModelConfig, Path], tmp_path: Path, case: str) -> None:
    _, _, src = exported
    make, match = BAD_FILES[case]
    dst = tmp_path / f"{case}.onnx"
    make(src, dst)
    with pytest.raises(DataError, match=match) as info:
        ImageEncoderSession(dst, None, providers="cpu")
    assert str(dst) in str(info.value)


def test_runtime_rejects_config_mismatch(exported: tuple[ImageEncoder, ModelConfig, Path]) -> None:
    _, _, path = exported
    with pytest.raises(DataError, match=r"another config \(feature_dim: file 64 vs expected 32\)") as info:
        ImageEncoderSession(path, ModelConfig(feature_dim=32), providers="cpu")
    assert str(path) in str(info.value)


def test_runtime_without_onnxruntime_says_what_to_install(
    exported: tuple[ImageEncoder, ModelConfig, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(ImportError, match=r"\.\[cpu\].*\.\[gpu\]"):
        ImageEncoderSession(exported[2])
