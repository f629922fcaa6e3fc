"""Export the image encoder to ONNX, the format the runtime (and the ROS node) loads.

The file is self-describing: ``metadata_props`` carry the ``ModelConfig`` JSON and a file-layout version, so the
runtime can refuse a model built for another input size or feature width instead of producing garbage. The
input/output names and static shapes are the contract checked by ``ep2p_loc_ros.runtime``:

    image              (1, 3, image_height, image_width) float32, RGB in [0, 1]
    patch_features     (1, feature_dim, image_height / 8, image_width / 8), L2-normalised over channels
    global_descriptor  (1, global_dim), L2-normalised

Uses the TorchScript exporter (``dynamo=False``): it needs no ``onnxscript``, folds BatchNorm into the
convolutions and gives a plain static graph. Importable without onnxruntime.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from .config import ModelConfig
from .image_encoder import ImageEncoder

__all__ = [
    "INPUT_NAME",
    "META_COMPONENT",
    "META_CONFIG",
    "META_FORMAT",
    "ONNX_FORMAT_VERSION",
    "ONNX_OPSET",
    "OUTPUT_NAMES",
    "expected_io_shapes",
    "export_image_encoder",
]

ONNX_OPSET = 17
ONNX_FORMAT_VERSION = 1  # layout of the exported file (names, shapes, metadata keys); bump on any change
INPUT_NAME = "image"
OUTPUT_NAMES = ("patch_features", "global_descriptor")
META_FORMAT = "ep2p_loc.onnx_format_version"
META_CONFIG = "ep2p_loc.model_config"
META_COMPONENT = "ep2p_loc.component"
COMPONENT = "image_encoder"


def expected_io_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Static shapes of the exported model's input and outputs, by name."""
    rows, cols = config.grid_size
    return {
        INPUT_NAME: (1, 3, config.image_height, config.image_width),
        OUTPUT_NAMES[0]: (1, config.feature_dim, rows, cols),
        OUTPUT_NAMES[1]: (1, config.global_dim),
    }


def export_image_encoder(model: ImageEncoder, config: ModelConfig, path: str | Path) -> Path:
    """Write ``model`` as ONNX to ``path`` atomically (a reader never sees a half-written file); returns the path.

    The model is traced in eval mode (BatchNorm uses its running statistics and is folded into the
    convolutions) and put back in the mode it was in. The result is checked with ``onnx.checker`` before the
    rename, so a file at ``path`` is always a complete, valid model.
    """
    path = Path(path)
    if getattr(model, "config", config) != config:
        raise ValueError("the model was built from a different ModelConfig than the one given for its metadata")
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(model.parameters())
    dummy = torch.rand(expected_io_shapes(config)[INPUT_NAME], device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
            traced = Path(tmp) / "traced.onnx"
            with warnings.catch_warnings(), torch.no_grad():
                # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript.
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", category=FutureWarning)
                torch.onnx.export(
                    model,
                    (dummy,),
                    str(traced),
                    dynamo=False,
                    opset_version=ONNX_OPSET,
                    input_names=[INPUT_NAME],
                    output_names=list(OUTPUT_NAMES),
                    do_constant_folding=True,
                )
            proto = onnx.load(str(traced))
            del proto.metadata_props[:]
            meta = {
                META_FORMAT: str(ONNX_FORMAT_VERSION),
                META_COMPONENT: COMPONENT,
                META_CONFIG: json.dumps(config.to_json(), sort_keys=True),
            }
            for key, value in meta.items():
                proto.metadata_props.add(key=key, value=value)
            proto.producer_name = "ep2p_loc_ros"
            proto.doc_string = "EP2P-Loc image encoder: image [0,1] -> patch_features (stride 8), global_descriptor"
            onnx.checker.check_model(proto, full_check=True)
            staged = Path(tmp) / "staged.onnx"
            with open(staged, "wb") as f:
                f.write(proto.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
            os.replace(staged, path)
    finally:
        model.train(was_training)
    return path
