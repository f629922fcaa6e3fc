"""The whole EP2P-Loc network, and the model directory it is shipped in.

A model directory (``models/`` by default) holds:
- ``config.json``: the :class:`ModelConfig` (with its format version), the sha256 of each file below (checked
  at load, so a flipped bit is refused) and training metadata;
- ``model.safetensors``: every weight (image encoder, point encoder, matching head), float32, no pickle;
- ``image_encoder.onnx``: the exported image encoder that the run-time uses (onnxruntime).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import replace_dir
from ..errors import DataError
from .config import ModelConfig
from .heads import MatchingHead
from .image_encoder import ImageEncoder
from .point_encoder import PointEncoder

__all__ = [
    "CONFIG_FILE",
    "ONNX_FILE",
    "WEIGHTS_FILE",
    "EP2PLocNet",
    "load_network",
    "save_model_dir",
    "sha256_file",
    "verify_model_file",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "image_encoder.onnx"


class EP2PLocNet(nn.Module):
    """Image encoder + point encoder + matching head, and the PnP-weight scale learned with the pose loss."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config)
        self.point_encoder = PointEncoder(config)
        self.head = MatchingHead(config)
        self.log_weight_scale = nn.Parameter(torch.zeros(()))


def _atomic_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


def save_model_dir(
    net: EP2PLocNet, out_dir: str | Path, info: dict[str, Any] | None = None, export_onnx: bool = True
) -> Path:
    """Write config, safetensors weights and the ONNX image encoder to ``out_dir`` atomically."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    tmp = _atomic_dir(out_dir)
    try:
        state = {
            k: v.detach().to(torch.float32).contiguous().clone()
            for k, v in net.state_dict().items()
            if v.dtype.is_floating_point
        }
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "ep2p-loc-model"})
        if export_onnx:
            from .export import export_image_encoder

            was_training = net.training
            net.eval()
            export_image_encoder(net.image_encoder, net.config, tmp / ONNX_FILE)
            net.train(was_training)
        files = {name: sha256_file(tmp / name) for name in (WEIGHTS_FILE, ONNX_FILE) if (tmp / name).exists()}
        doc = {**net.config.to_json(), "files": files, "info": info or {}}
        (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_model_config(model_dir: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The model's config and its training metadata (``info``)."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read model config ({exc})") from exc
    info = data.pop("info", {}) if isinstance(data, dict) else {}
    if isinstance(data, dict):
        data.pop("files", None)
    return ModelConfig.from_json(data, str(path)), info


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_model_file(model_dir: str | Path, name: str) -> Path:
    """``model_dir/name`` exists and has the sha256 that ``config.json`` records (a flipped bit is refused)."""
    model_dir = Path(model_dir)
    path = model_dir / name
    cfg_path = model_dir / CONFIG_FILE
    try:
        files = json.loads(cfg_path.read_text()).get("files")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise DataError(f"{cfg_path}: cannot read model config ({exc})") from exc
    if not isinstance(files, dict) or not isinstance(files.get(name), str):
        raise DataError(f"{cfg_path}: no sha256 recorded for {name}; re-save the model (ep2p-loc export)")
    if not path.is_file():
        raise DataError(f"{path}: missing")
    actual = sha256_file(path)
    if actual != files[name]:
        raise DataError(f"{path}: sha256 {actual[:12]}… does not match config.json ({files[name][:12]}…): corrupt")
    return path


def load_network(model_dir: str | Path, verify: bool = True) -> tuple[EP2PLocNet, dict[str, Any]]:
    """Load the network from a model directory, refusing missing, corrupt or mismatched weights.

    ``verify=False`` skips the sha256 check (only ``ep2p-loc export``, which rewrites the checksums, uses it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config, info = read_model_config(model_dir)
    path = verify_model_file(model_dir, WEIGHTS_FILE) if verify else model_dir / WEIGHTS_FILE
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as exc:
        raise DataError(f"{path}: cannot read weights ({exc})") from exc
    net = EP2PLocNet(config)
    expected = {k: v for k, v in net.state_dict().items() if v.dtype.is_floating_point}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise DataError(f"{path}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise DataError(f"{path}: {k} has shape {tuple(v.shape)}, the config needs {tuple(expected[k].shape)}")
        if not torch.isfinite(v).all():
            raise DataError(f"{path}: {k} contains NaN/Inf")
    net.load_state_dict(state, strict=False)
    net.eval()
    return net, info
