"""Wider context for each point's feature: what the map-grid cells around it hold, at a few cell sizes.

Why: the point encoder's features are nearly alike far apart (session 8, ``models/README.md``: 90 % of the
points of an outdoor frame have a twin above 0.95 cosine more than two patches away, and the features span about
five effective dimensions), so no image-side training can tell their patches apart. This module adds, per cell
size, the mean feature of the points in the point's cell of a map-anchored grid and the point's offset from their
centroid (in cell sizes), and maps that through a small MLP onto a residual of the feature. The last layer starts
at zero: a model that gains this module starts exactly where it was. The grid is anchored at the map origin, so a
training crop and a map submap put a point in the same cells (cells cut by a crop's border see fewer points).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the universal torch spelling

from .config import ModelConfig

__all__ = ["PointContext"]


class PointContext(nn.Module):
    """``pool`` gathers the cell statistics of a cloud; ``forward`` turns features plus those into new features."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.cells = tuple(float(c) for c in config.point_context_cells)
        d = config.feature_dim
        hidden = config.point_hidden
        self.mlp = nn.Sequential(
            nn.Linear(d + len(self.cells) * (d + 3), hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.out = nn.Linear(hidden, d)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def context_dim(self) -> int:
        return len(self.cells) * (self.out.out_features + 3)

    def pool(self, points_map: np.ndarray | torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """(N, 3) map-frame points and their (N, D) features -> (N, cells · (D + 3)) context: per cell size, the
        mean feature of the point's cell and the point's offset from the cell's centroid / cell size."""
        p = torch.as_tensor(np.asarray(points_map, dtype=np.float64), device=features.device)
        out = []
        for size in self.cells:
            _, inverse, counts = torch.unique(
                torch.floor(p / size).long(), dim=0, return_inverse=True, return_counts=True
            )
            n = counts.to(features.dtype)[:, None]
            mean_f = torch.zeros(len(counts), features.shape[1], dtype=features.dtype, device=features.device)
            mean_f = mean_f.index_add(0, inverse, features) / n
            mean_p = torch.zeros(len(counts), 3, dtype=p.dtype, device=p.device).index_add(0, inverse, p) / n.double()
            out += [mean_f[inverse], ((p - mean_p[inverse]) / size).to(features.dtype)]
        return torch.cat(out, 1)

    def widen(self, points_map: np.ndarray | torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The features of a whole cloud with their own cells' context: ``forward(features, pool(...))``."""
        return self(features, self.pool(points_map, features))

    def forward(self, features: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(N, D) features and their (N, context_dim) ``pool`` context -> (N, D) L2-normalised features."""
        hidden = self.mlp(torch.cat([features, context.to(features.dtype)], 1))
        return F.normalize(features + self.out(hidden), dim=-1)
