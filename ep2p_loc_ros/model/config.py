"""The model's configuration: one frozen dataclass, saved as JSON beside the weights.

Shapes every module agrees on:
- The image goes into the network resized to ``(image_height, image_width)`` (RGB, float in [0, 1]); the camera
  is scaled the same way (``PinholeCamera`` per-axis scaling, pixel centres at integers).
- Image encoder: ``patch_features`` (B, feature_dim, image_height / patch_stride, image_width / patch_stride),
  L2-normalised along the channel axis; ``global_descriptor`` (B, global_dim), L2-normalised.
- Point encoder: points (N, 3) in metres relative to the submap's reference viewpoint (map axes, z up) and
  reflectance (N,) → ``point_features`` (N, feature_dim) L2-normalised, ``global_descriptor`` (global_dim,).
  With ``point_context_cells``, ``point_context.py`` then widens each feature with the statistics of the map-grid
  cells around the point (the descriptor is unchanged).
- Matching heads (``heads.py``): point × patch similarity → patch id (or "outside the image"), then an MLP over
  positional encodings of the ``patch_stride²`` pixel positions inside the patch → the pixel.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import DataError

__all__ = ["MODEL_FORMAT_VERSION", "ModelConfig"]

MODEL_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelConfig:
    image_height: int = 192
    image_width: int = 640
    patch_stride: int = 8
    feature_dim: int = 64
    global_dim: int = 128
    image_channels: tuple[int, ...] = (32, 64, 96, 128)  # stem -> stride 8 -> stride 16 -> stride 32
    point_voxel: float = 0.3  # metres; the point encoder always sees points at this density
    point_neighbors: int = 16
    point_layers: int = 3
    point_hidden: int = 64
    pe_frequencies: int = 6  # positional-encoding frequencies of the in-patch pixel MLP
    refine_hidden: int = 64
    temperature: float = 0.05  # softmax temperature of point-patch similarities
    # Map-grid cell sizes (metres) whose statistics widen each point feature's context (point_context.py); () off
    point_context_cells: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.image_height % 32 or self.image_width % 32:
            raise ValueError(f"image size must be a multiple of 32, got {self.image_height}x{self.image_width}")
        if self.patch_stride != 8:
            raise ValueError("the image encoder is built for patch_stride 8")
        object.__setattr__(self, "image_channels", tuple(int(c) for c in self.image_channels))
        object.__setattr__(self, "point_context_cells", tuple(float(c) for c in self.point_context_cells))
        if not all(c > 0 for c in self.point_context_cells):  # also refuses NaN
            raise ValueError(f"point_context_cells must be positive sizes, got {self.point_context_cells}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid."""
        return self.image_height // self.patch_stride, self.image_width // self.patch_stride

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid_size
        return rows * cols

    def to_json(self) -> dict:
        return {"format_version": MODEL_FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict, source: str = "model config") -> ModelConfig:
        if not isinstance(data, dict):
            raise DataError(f"{source}: expected a JSON object")
        version = data.get("format_version")
        if version != MODEL_FORMAT_VERSION:
            raise DataError(f"{source}: format_version {version!r} is not supported (expected {MODEL_FORMAT_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"format_version"})
        if unknown:
            raise DataError(f"{source}: unknown keys {unknown}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as exc:
            raise DataError(f"{source}: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read model config ({exc})") from exc
        return cls.from_json(data, str(path))
