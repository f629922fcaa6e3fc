"""onnxruntime inference of the exported image encoder (ROS-free).

The model file is validated before any inference: a missing, truncated or foreign file, or one exported for a
different ``ModelConfig``, raises ``DataError`` naming the file and the fault, so a node fails at configure time
with a readable message rather than at the first image with a shape error.

Execution provider: CUDA when onnxruntime offers it (the ``onnxruntime-gpu`` build), else CPU. If creating the
CUDA session raises (driver, cuDNN), or onnxruntime silently drops CUDA, it falls back to CPU with a warning.
The provider actually in use is ``ImageEncoderSession.provider`` and is logged; ``fallback`` says why it is not
the one asked for (the node puts it on /diagnostics).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .model.config import ModelConfig
from .model.export import (
    COMPONENT,
    INPUT_NAME,
    META_COMPONENT,
    META_CONFIG,
    META_FORMAT,
    ONNX_FORMAT_VERSION,
    OUTPUT_NAMES,
    expected_io_shapes,
)

__all__ = ["CPU", "CUDA", "ImageEncoderSession", "import_onnxruntime", "read_onnx_config"]

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEFAULT_MAX_THREADS = 4  # beyond ~4 threads a ~1 GFLOP network gains little and starves the rest of the node


def import_onnxruntime() -> Any:
    """``onnxruntime``, or an ImportError that says which extra to install."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "onnxruntime is not installed: install this package with `pip install .[cpu]` (CPU) or "
            "`pip install .[gpu]` (CUDA), or run `make setup` (EP2P_GPU=1 for CUDA)"
        ) from exc
    return onnxruntime


def _default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(DEFAULT_MAX_THREADS, cores))


def read_onnx_config(path: str | Path) -> ModelConfig:
    """Parse and check an exported image encoder file; returns the ``ModelConfig`` stored in it.

    Raises ``DataError`` (naming the file) if it is missing, not a valid ONNX model, not an EP2P-Loc image
    encoder, of another file-format version, or its config metadata is unreadable.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except (DecodeError, onnx.checker.ValidationError, ValueError, OSError, RuntimeError) as exc:
        raise DataError(f"{path}: not a valid ONNX model, the file may be truncated or corrupt ({exc})") from exc
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get(META_COMPONENT) != COMPONENT:
        raise DataError(
            f"{path}: not an EP2P-Loc image encoder (metadata {META_COMPONENT!r} is {meta.get(META_COMPONENT)!r})"
        )
    if meta.get(META_FORMAT) != str(ONNX_FORMAT_VERSION):
        raise DataError(
            f"{path}: ONNX format version {meta.get(META_FORMAT)!r} is not supported (expected {ONNX_FORMAT_VERSION}); "
            "re-export the model with this version of ep2p_loc_ros"
        )
    try:
        data = json.loads(meta.get(META_CONFIG, ""))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: metadata {META_CONFIG!r} is not JSON ({exc})") from exc
    return ModelConfig.from_json(data, f"{path} (metadata {META_CONFIG})")


def _config_diff(a: ModelConfig, b: ModelConfig) -> str:
    da, db = a.to_json(), b.to_json()
    return ", ".join(f"{k}: file {db[k]!r} vs expected {da[k]!r}" for k in da if da[k] != db.get(k))


class ImageEncoderSession:
    """An onnxruntime session of the image encoder: ``run(image) -> (patch_features, global_descriptor)``.

    ``config``: the ModelConfig the caller expects (``None``: take the file's). ``providers``: ``"auto"``
    (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` (CUDA required) or an explicit onnxruntime list.
    ``intra_op_threads``: CPU threads for one inference (``None``: min(4, usable cores)); it also bounds the
    CPU work of the CUDA provider. ``allow_spinning``: onnxruntime's threads busy-wait briefly after each run,
    which shaves latency but burns CPU; turn it off where the encoder shares few cores with the rest of the node.
    """

    def __init__(
        self,
        path: str | Path,
        config: ModelConfig | None = None,
        providers: str | Sequence[str] = "auto",
        intra_op_threads: int | None = None,
        allow_spinning: bool = True,
    ) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        file_config = read_onnx_config(self.path)
        if config is not None and config != file_config:
            raise DataError(f"{self.path}: model was exported for another config ({_config_diff(config, file_config)})")
        self.config = file_config
        self.intra_op_threads = _default_threads() if intra_op_threads is None else int(intra_op_threads)
        if self.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0 (0: onnxruntime's default), got {intra_op_threads}")

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        options.log_severity_level = 3  # errors only; onnxruntime's own warnings would go to stderr, not logging

        wanted = self._resolve_providers(ort, providers)
        # why inference is not where it was asked to be ("" when it is): the node reports it on /diagnostics
        self.fallback: str = ""
        self.session = self._create(ort, options, wanted)
        active = self.session.get_providers()
        self.provider: str = active[0]
        if CUDA in wanted and self.provider != CUDA:
            if not self.fallback:
                self.fallback = "onnxruntime did not enable CUDA (check CUDA/cuDNN libraries): running on CPU"
            logger.warning("%s: %s", self.path, self.fallback)
        self._check_io()
        logger.info(
            "image encoder %s on %s (%d intra-op threads)", self.path.name, self.provider, self.intra_op_threads
        )

    @property
    def device(self) -> str:
        """``"cuda"`` or ``"cpu"``: where inference runs."""
        return "cuda" if self.provider == CUDA else "cpu"

    @staticmethod
    def _resolve_providers(ort: Any, providers: str | Sequence[str]) -> list[str]:
        available = ort.get_available_providers()
        if isinstance(providers, str):
            choice = providers.lower()
            if choice == "auto":
                return [CUDA, CPU] if CUDA in available else [CPU]
            if choice == "cpu":
                return [CPU]
            if choice == "cuda":
                if CUDA not in available:
                    raise RuntimeError(
                        f"CUDA requested but this onnxruntime offers only {available}: install `.[gpu]` "
                        "(onnxruntime-gpu) or use providers='auto'"
                    )
                return [CUDA, CPU]
            raise ValueError(f"providers must be 'auto', 'cpu', 'cuda' or a list, got {providers!r}")
        wanted = list(providers)
        missing = [p for p in wanted if p not in available]
        if missing or not wanted:
            raise ValueError(f"providers {wanted} not all available (onnxruntime offers {available})")
        return wanted

    def _create(self, ort: Any, options: Any, wanted: list[str]) -> Any:
        path = str(self.path)
        if wanted != [CPU]:
            try:
                return ort.InferenceSession(path, sess_options=options, providers=wanted)
            except Exception as exc:  # any provider failure: fall back, the file itself was checked
                self.fallback = f"CUDA provider failed ({type(exc).__name__}: {str(exc)[:200]}): running on CPU"
                logger.warning("%s: could not create a session with %s (%s); falling back to CPU", path, wanted, exc)
        try:
            return ort.InferenceSession(path, sess_options=options, providers=[CPU])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise DataError(f"{path}: onnxruntime cannot load the model ({exc})") from exc

    def _check_io(self) -> None:
        expected = expected_io_shapes(self.config)
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME]:
            raise DataError(f"{self.path}: expected one input {INPUT_NAME!r}, the model has {[i.name for i in inputs]}")
        if sorted(o.name for o in outputs) != sorted(OUTPUT_NAMES):
            raise DataError(
                f"{self.path}: expected outputs {list(OUTPUT_NAMES)}, the model has {[o.name for o in outputs]}"
            )
        for arg in (*inputs, *outputs):
            if arg.type != "tensor(float)":
                raise DataError(f"{self.path}: {arg.name!r} has type {arg.type}, expected tensor(float)")
            shape = tuple(arg.shape)
            if shape != expected[arg.name]:
                raise DataError(
                    f"{self.path}: {arg.name!r} has shape {shape}, expected {expected[arg.name]} for the config"
                )
        self._output_names = list(OUTPUT_NAMES)

    def run(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image (1, 3, H, W) float32 in [0, 1] (``prepare_image``) -> (patch_features, global_descriptor)."""
        shape = expected_io_shapes(self.config)[INPUT_NAME]
        if not isinstance(image, np.ndarray) or image.shape != shape:
            got = image.shape if isinstance(image, np.ndarray) else type(image).__name__
            raise DataError(f"image: expected an array of shape {shape} (prepare_image), got {got}")
        if image.dtype != np.float32:
            if not np.issubdtype(image.dtype, np.floating):
                raise DataError(f"image: expected float32 in [0, 1], got dtype {image.dtype}")
            image = image.astype(np.float32)
        patch, global_ = self.session.run(self._output_names, {INPUT_NAME: np.ascontiguousarray(image)})
        return patch, global_

    def __repr__(self) -> str:
        return f"ImageEncoderSession({str(self.path)!r}, provider={self.provider!r}, threads={self.intra_op_threads})"
