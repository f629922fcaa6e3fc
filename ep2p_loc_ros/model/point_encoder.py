"""Point encoder: per-point map features and a submap descriptor, a pure-torch stand-in for Fast Point Transformer.

EP2P-Loc encodes every map point once, offline, and matches the features against image patches seen from any
camera pose inside the submap. So the features must describe *local geometry*, not where a point lies: they are
built only from quantities that do not change when the whole submap is translated in x/y or rotated about the
vertical axis — height ``z`` (metres relative to the reference viewpoint, which sits at about sensor height),
reflectance, eigen-features of the neighbourhood covariance, and rotation-about-z invariant relative positions
(horizontal distance, height difference, alignment with the local covariance). Map heading is arbitrary, so this
loses nothing a map could be trusted to carry; the price is that mirror images look alike.

Architecture (Point Transformer, Zhao et al. 2021, on kNN neighbourhoods):

- input embedding of 14 invariant per-point features (``GEOMETRY_FEATURES``);
- ⌈L/2⌉ vector-attention blocks at the input density (``L = point_layers``);
- a coarse level: about one point in ten, chosen as a deterministic independent set of the kNN graph (each chosen
  point suppresses its neighbours), features max-pooled from its fine neighbourhood plus an embedding of
  covariance features over the coarse (≈ 3× wider) neighbourhood, then ``COARSE_LAYERS`` blocks there;
- inverse-distance interpolation from the 3 nearest coarse points, added to the fine features, then ⌊L/2⌋ more
  fine blocks; a linear head to ``feature_dim`` and L2 normalisation;
- global descriptor: GeM pooling of a per-point projection, then a linear layer to ``global_dim``, L2-normalised.

A vector-attention layer computes, for point i and its k neighbours j,
``y_i = Σ_j softmax_j(γ(q_i − k_j + δ_ij)) ⊙ (v_j + δ_ij)`` with ``δ_ij = θ(r_ij)``, an MLP on the invariant
relative-position features ``r_ij``; the softmax runs over the k neighbours per channel.

The coarse level is not a coarse voxel grid: its points are an independent set of the kNN graph, so coarse
neighbourhoods follow the surfaces. Which points win is decided by a hash of each point's map voxel cell
(``cell_priority``), not by its row: rows change with the crop, and then map-time features (whole submaps) would
disagree with training-time ones (frustum crops). The hash is fixed to the map grid, which ``voxel_downsample``
already is; the network sees only the invariant inputs, so it still generalises over headings.

The kNN graph is built once for all points (scipy ``cKDTree``); attention is evaluated for chunks of query points,
so memory stays bounded on 200k-point submaps, and chunked and unchunked outputs are identical.
The encoder expects points at ``point_voxel`` density: use ``voxel_downsample`` (or ``PointEncoder.encode_cloud``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from scipy.spatial import cKDTree
from torch import nn

from .config import ModelConfig
from .point_context import PointContext

__all__ = [
    "COARSE_LAYERS",
    "GEOMETRY_FEATURES",
    "PAIR_FEATURES",
    "PointEncoder",
    "PointEncoderOutput",
    "PointGraph",
    "build_point_graph",
    "cell_priority",
    "voxel_downsample",
]

GEOMETRY_FEATURES = 14  # per-point invariant inputs, see _level_features
PAIR_FEATURES = 4  # per-neighbour invariant relative-position inputs, see _level_features
COARSE_LAYERS = 2  # attention blocks at the coarse level
COARSE_SPACING = 3.0  # coarse neighbour distances are measured in units of this many voxels
UP_NEIGHBORS = 3  # coarse points interpolated onto each fine point
DEFAULT_CHUNK = 4096  # query points per attention chunk: ~20 MB per (chunk, k, 64) float32 tensor
Z_SCALE = 4.0  # metres; height enters the embedding as z / Z_SCALE


def _validate(
    points: np.ndarray | torch.Tensor, reflectance: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 copies of the inputs, or a ValueError that says what is wrong (callers get one fault family)."""
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    if isinstance(reflectance, torch.Tensor):
        reflectance = reflectance.detach().cpu().numpy()
    pts = np.asarray(points, dtype=np.float64)
    refl = np.asarray(reflectance, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    if refl.shape != (len(pts),):
        raise ValueError(f"reflectance must have shape ({len(pts)},), got {refl.shape}")
    if len(pts) == 0:
        raise ValueError("no points: the point encoder needs at least one point")
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {len(pts)} points are NaN or infinite (first at index {np.argmax(bad)})")
    bad = ~np.isfinite(refl)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} reflectance values are NaN or infinite (first at index {np.argmax(bad)})")
    return pts, refl


def voxel_downsample(
    points: np.ndarray, reflectance: np.ndarray, voxel: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average the points (and reflectance) of each occupied voxel: the density the point encoder is built for.

    The centroid, not the first point, represents a voxel: it lies on the surface and does not depend on the input
    order. Voxels come out sorted by their integer (x, y, z) cell, so the result is deterministic. ``inverse`` (N,)
    gives each input point's voxel, so ``features[inverse]`` broadcasts voxel features back to every map point.
    Returns ``(points_v (M, 3) float32, reflectance_v (M,) float32, inverse (N,) int64)``.
    """
    pts, refl = _validate(points, reflectance)
    if not (np.isfinite(voxel) and voxel > 0):
        raise ValueError(f"voxel must be a positive size in metres, got {voxel}")
    cells = np.floor(pts / voxel).astype(np.int64)
    cells -= cells.min(axis=0)
    span = [int(s) + 1 for s in cells.max(axis=0)]
    if span[0] * span[1] * span[2] < 2**62:  # one int64 key per cell: a 1-D unique is much faster than axis=0
        key = (cells[:, 0] * span[1] + cells[:, 1]) * span[2] + cells[:, 2]
        _, inverse = np.unique(key, return_inverse=True)
    else:
        _, inverse = np.unique(cells, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    m = int(inverse.max()) + 1
    counts = np.bincount(inverse, minlength=m).astype(np.float64)
    centroid = np.stack([np.bincount(inverse, pts[:, d], minlength=m) for d in range(3)], axis=1) / counts[:, None]
    refl_v = np.bincount(inverse, refl, minlength=m) / counts
    return centroid.astype(np.float32), refl_v.astype(np.float32), inverse


@dataclass
class _Level:
    """One resolution of the graph: invariant per-point and per-neighbour inputs, and the kNN indices."""

    geometry: torch.Tensor  # (M, GEOMETRY_FEATURES) float32
    pairs: torch.Tensor  # (M, k, PAIR_FEATURES) float32
    neighbors: torch.Tensor  # (M, k) int64, k = min(point_neighbors, M)

    def to(self, device: torch.device | str) -> _Level:
        return _Level(*(getattr(self, f.name).to(device) for f in fields(self)))


@dataclass
class PointGraph:
    """Everything the network needs that does not need gradients: built once per point set, in numpy/scipy.

    Training can build it once per sample and call ``PointEncoder.forward_graph`` repeatedly.
    """

    fine: _Level
    coarse: _Level
    pool_index: torch.Tensor  # (Mc,) int64: fine index of each coarse point
    up_index: torch.Tensor  # (N, u) int64: nearest coarse points of each fine point
    up_weight: torch.Tensor  # (N, u) float32: inverse-distance weights, rows sum to 1

    @property
    def num_points(self) -> int:
        return int(self.fine.geometry.shape[0])

    def to(self, device: torch.device | str) -> PointGraph:
        return PointGraph(
            self.fine.to(device),
            self.coarse.to(device),
            self.pool_index.to(device),
            self.up_index.to(device),
            self.up_weight.to(device),
        )


def _knn(points: np.ndarray, k: int, workers: int) -> tuple[cKDTree, torch.Tensor]:
    """Indices (M, min(k, M)) of each point's nearest points, itself included (the graph is built once, globally)."""
    tree = cKDTree(points)
    k = min(k, len(points))
    _, idx = tree.query(points, k=k, workers=workers)
    return tree, torch.from_numpy(idx.reshape(len(points), k).astype(np.int64))


FEATURE_CHUNK = 16384  # points per chunk of the geometry features: keeps the (chunk, k, 3) temporaries in cache


def _level_features(
    points: torch.Tensor, reflectance: torch.Tensor, nbr: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point (M, GEOMETRY_FEATURES) and per-neighbour (M, k, PAIR_FEATURES) inputs, all invariant to x/y
    translation and rotation about z.

    Direction-dependent quantities (eigenvector z-components) are multiplied by the eigenvalue gap that makes
    them well defined, so they stay continuous where the eigenvectors are not (a plane's in-plane axes, a pole's
    cross-section). Float32 offsets (differences of nearby float32 coordinates are exact); float64 eigensolver.
    """
    m, k = nbr.shape
    geometry = torch.empty(m, GEOMETRY_FEATURES)
    pairs = torch.empty(m, k, PAIR_FEATURES)
    eps = (0.01 * scale) ** 2
    for s in range(0, m, FEATURE_CHUNK):
        p = points[s : s + FEATURE_CHUNK]
        q = len(p)
        d = points.index_select(0, nbr[s : s + FEATURE_CHUNK].reshape(-1)).view(q, k, 3) - p[:, None]
        mu = d.mean(dim=1)  # neighbourhood centroid, relative to the point
        c = d - mu[:, None]
        cov = torch.einsum("qki,qkj->qij", c, c) / k
        evals_np, evecs_np = np.linalg.eigh(cov.double().numpy())  # ascending
        evals = torch.from_numpy(evals_np).float().clamp_min(0.0)
        evecs = torch.from_numpy(evecs_np).float()
        l3, l2, l1 = evals.unbind(dim=1)
        tr = l1 + l2 + l3 + eps
        lin = (l1 - l2) / (l1 + eps)
        pla = (l2 - l3) / (l1 + eps)
        normal = evecs[:, :, 0]
        dz = d[..., 2]
        dist = d.norm(dim=-1)
        geometry[s : s + q] = torch.stack(
            [
                p[:, 2] / Z_SCALE,
                reflectance[s : s + q],
                lin,
                pla,
                l3 / (l1 + eps),  # scattering
                l1.sqrt() / scale,
                l3.sqrt() / scale,
                cov[:, 2, 2] / tr,  # share of the spread that is vertical
                torch.hypot(cov[:, 0, 2], cov[:, 1, 2]) / tr,  # tilt of the spread (a z-rotation invariant norm)
                pla * normal[:, 2].abs(),  # horizontal surface (ground, roof) vs wall
                lin * evecs[:, 2, 2].abs(),  # vertical line (pole, trunk) vs horizontal edge
                -mu[:, 2] / scale,  # top or bottom of the local structure
                (dz.amax(dim=1) - dz.amin(dim=1)) / scale,
                dist.mean(dim=1) / scale,
            ],
            dim=1,
        )
        quad = torch.einsum("qki,qij,qkj->qk", d, cov, d)
        pairs[s : s + q] = torch.stack(
            [
                torch.hypot(d[..., 0], d[..., 1]) / scale,
                dz / scale,
                quad / (tr[:, None] * (dist * dist + eps)),  # how far the offset runs along the local spread
                pla[:, None] * torch.einsum("qki,qi->qk", d, normal).abs() / scale,  # offset from the tangent plane
            ],
            dim=-1,
        )
    return geometry, pairs


def cell_priority(points: np.ndarray, voxel: float) -> np.ndarray:
    """A pseudo-random rank in [0, 2^62) for each point, from the integer ``voxel`` cell it lies in.

    The coarse level keeps the points that outrank their neighbours, so this rank decides which points carry the
    coarse features. It must belong to the *place*, not to the point's row: a row index changes with the crop and
    the order of a point set, and then features computed over a whole submap (map time) and over a frame's
    frustum crop (training) disagree. Pass map-frame points (where ``voxel_downsample`` anchors its grid) and
    every crop of the map ranks a voxel the same. splitmix64's finaliser over a mix of the three cell indices.
    """
    pts = np.asarray(points, dtype=np.float64)
    cells = np.floor(pts / voxel).astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        h = (
            cells[:, 0] * np.uint64(0x9E3779B97F4A7C15)
            ^ cells[:, 1] * np.uint64(0xC2B2AE3D27D4EB4F)
            ^ cells[:, 2] * np.uint64(0x165667B19E3779F9)
        )
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(2)).astype(np.int64)


def _independent_set(nbr: np.ndarray, priority: np.ndarray, max_rounds: int = 64) -> np.ndarray:
    """Coarse points: a greedy independent set of the kNN graph, in rounds, by ``priority`` (``cell_priority``).

    In each round an undecided point is chosen if it outranks every undecided point in its neighbourhood and no
    point chosen in the same round has it as a neighbour; the chosen points' neighbours (both directions) are then
    covered. Depends only on the graph and the priorities, not on the order or the crop of the points (away from
    the crop's border, where the graph itself differs).
    """
    n = len(nbr)
    pr = np.asarray(priority, dtype=np.int64)
    undecided = np.ones(n, dtype=bool)
    chosen = np.zeros(n, dtype=bool)
    rows = np.arange(n)[:, None]
    for _ in range(max_rounds):
        pr_u = np.where(undecided, pr, -1)
        new = undecided & (pr_u[nbr].max(axis=1) == pr)
        idx = np.flatnonzero(new)
        others = nbr[idx][nbr[idx] != rows[idx]]
        dominated = np.zeros(n, dtype=bool)
        dominated[others] = True
        new &= ~dominated  # the global maximum is never dominated, so every round makes progress
        chosen |= new
        covered = new[nbr].any(axis=1)
        covered[nbr[new].ravel()] = True
        undecided &= ~covered
        if not undecided.any():
            break
    chosen |= undecided  # after max_rounds: whatever is left is not near a chosen point, so keep it
    return np.flatnonzero(chosen)


def build_point_graph(
    points: np.ndarray | torch.Tensor,
    reflectance: np.ndarray | torch.Tensor,
    config: ModelConfig,
    workers: int | None = None,
    priority: np.ndarray | None = None,
) -> PointGraph:
    """kNN graphs (fine and coarse), invariant input features, pooling and interpolation indices.

    ``points`` (N, 3) in metres relative to the submap's reference viewpoint, map axes (z up), at about
    ``config.point_voxel`` density; ``reflectance`` (N,) in [0, 1]. ``priority`` (N,) ranks the points for the
    coarse level: pass ``cell_priority`` of the *map-frame* points when ``points`` are relative to a viewpoint
    that moves (training jitters it); the default ranks by the cells of ``points`` themselves.
    Raises ValueError on empty or non-finite input.
    """
    pts, refl = _validate(points, reflectance)
    if priority is None:
        priority = cell_priority(pts, config.point_voxel)
    elif np.shape(priority) != (len(pts),):
        raise ValueError(f"priority must have shape ({len(pts)},), got {np.shape(priority)}")
    workers = workers or torch.get_num_threads()
    voxel = config.point_voxel
    pts32 = torch.from_numpy(pts.astype(np.float32))
    refl32 = torch.from_numpy(refl.astype(np.float32))
    _, nbr = _knn(pts, config.point_neighbors, workers)
    fine = _Level(*_level_features(pts32, refl32, nbr, voxel), nbr)

    sel = _independent_set(nbr.numpy(), priority)
    cpts = pts[sel]
    ctree, cnbr = _knn(cpts, config.point_neighbors, workers)
    sel_t = torch.from_numpy(sel)
    coarse = _Level(*_level_features(pts32[sel_t], refl32[sel_t], cnbr, voxel * COARSE_SPACING), cnbr)

    u = min(UP_NEIGHBORS, len(sel))
    udist, uidx = ctree.query(pts, k=u, workers=workers)
    udist, uidx = udist.reshape(len(pts), u), uidx.reshape(len(pts), u)
    w = 1.0 / (udist + 0.1 * voxel)  # bounded: a coarse point's own fine point leans on it, but not exclusively
    w /= w.sum(axis=1, keepdims=True)
    return PointGraph(
        fine,
        coarse,
        torch.from_numpy(sel.astype(np.int64)),
        torch.from_numpy(uidx.astype(np.int64)),
        torch.from_numpy(w.astype(np.float32)),
    )


class VectorAttention(nn.Module):
    """Point Transformer vector attention over kNN neighbourhoods, evaluated in chunks of query points.

    ``y_i = Σ_j softmax_j(γ(q_i − k_j + δ_ij)) ⊙ (v_j + δ_ij)``, softmax over the k neighbours per channel,
    ``δ_ij = θ(r_ij)`` an MLP on invariant relative-position features. γ's first layer is linear, so it is
    applied before the gather: ``q_i`` and ``k_j`` are projected once per point straight to γ's hidden width
    (C/4) and ``W δ_ij`` comes from θ's hidden layer. The same function as the textbook layer (without a
    normalisation in front of γ), at about half the per-neighbour cost: only the attention weights and
    ``v_j + δ_ij`` are (Q, k, C) tensors. Biases that cannot change the output are left out: γ's last one (the
    softmax ignores a per-channel constant) and θ's last one (weights sum to 1, so ``v``'s bias carries it).
    The softmax is normalised after the weighted sum, one pass fewer over (Q, k, C).
    """

    def __init__(self, channels: int, pair_dim: int = PAIR_FEATURES, pos_hidden: int = 16) -> None:
        super().__init__()
        hidden = max(channels // 4, 8)
        self.hidden = hidden
        self.channels = channels
        self.qk = nn.Linear(channels, 2 * hidden)  # W q_i and W k_j of γ's first layer
        self.v = nn.Linear(channels, channels)
        self.pos_in = nn.Sequential(nn.Linear(pair_dim, pos_hidden), nn.ReLU())  # θ's hidden layer
        self.pos_out = nn.Linear(pos_hidden, channels, bias=False)  # δ_ij
        self.pos_gamma = nn.Linear(pos_hidden, hidden, bias=False)  # W δ_ij
        self.gamma = nn.Sequential(nn.ReLU(), nn.Linear(hidden, channels, bias=False))
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, neighbors: torch.Tensor, pairs: torch.Tensor, chunk: int) -> torch.Tensor:
        q, k = self.qk(x).split(self.hidden, dim=-1)
        k = k.contiguous()
        v = self.v(x)
        inplace = not torch.is_grad_enabled()  # in-place only where autograd keeps nothing
        outs = []
        for s in range(0, x.shape[0], chunk):
            idx = neighbors[s : s + chunk]
            n_q, n_k = idx.shape
            flat = idx.reshape(-1)
            h = self.pos_in(pairs[s : s + chunk]).reshape(-1, self.pos_out.in_features)  # (Q k, pos_hidden)
            # Gathers are fresh tensors that autograd does not keep, so they are updated in place, also in training.
            value = v.index_select(0, flat).addmm_(h, self.pos_out.weight.t())  # v_j + δ_ij
            a = k.index_select(0, flat).addmm_(h, self.pos_gamma.weight.t(), beta=-1.0)  # W δ_ij − k_j
            a = a.view(n_q, n_k, self.hidden).add_(q[s : s + chunk, None])
            logits = self.gamma(a)  # (Q, k, C)
            top = logits.amax(dim=1, keepdim=True)
            # exp below about -88 is denormal and ~10x slower on CPU; e^-80 is nothing next to the maximum's 1.
            if inplace:
                w = logits.sub_(top).clamp_min_(-80.0).exp_()
                y = w.sum(dim=1)
                num = w.mul_(value.view(n_q, n_k, self.channels)).sum(dim=1)
            else:
                w = (logits - top).clamp_min(-80.0).exp()
                y = w.sum(dim=1)
                num = (w * value.view(n_q, n_k, self.channels)).sum(dim=1)
            outs.append(num / y)
        return self.out(torch.cat(outs))


class PointTransformerBlock(nn.Module):
    """Pre-norm residual block: vector attention, then a per-point MLP. LayerNorm, so chunking changes nothing."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn = VectorAttention(channels)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 2 * channels), nn.ReLU(), nn.Linear(2 * channels, channels))

    def forward(self, x: torch.Tensor, level: _Level, chunk: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), level.neighbors, level.pairs, chunk)
        return x + self.mlp(self.norm2(x))


def _embedding(in_dim: int, channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, channels), nn.LayerNorm(channels), nn.ReLU(), nn.Linear(channels, channels))


class PointEncoderOutput(NamedTuple):
    features: torch.Tensor  # (N, feature_dim), L2-normalised rows
    global_descriptor: torch.Tensor  # (global_dim,), L2-normalised


class PointEncoder(nn.Module):
    """Map points → per-point features (N, feature_dim) and a submap descriptor (global_dim,), both L2-normalised."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config.point_hidden
        n_down = (config.point_layers + 1) // 2
        self.embed = _embedding(GEOMETRY_FEATURES, c)
        self.down = nn.ModuleList(PointTransformerBlock(c) for _ in range(n_down))
        self.pool = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c), nn.ReLU())
        self.coarse_embed = _embedding(GEOMETRY_FEATURES, c)
        self.coarse = nn.ModuleList(PointTransformerBlock(c) for _ in range(COARSE_LAYERS))
        self.up_proj = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c))
        self.up = nn.ModuleList(PointTransformerBlock(c) for _ in range(config.point_layers - n_down))
        self.head_norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, config.feature_dim)
        self.global_proj = nn.Linear(c, 2 * c)
        self.gem_p = nn.Parameter(torch.tensor(3.0))
        self.global_head = nn.Linear(2 * c, config.global_dim)
        # optional wider context, applied where the map-frame points are known (encode_voxels, training)
        self.context = PointContext(config) if config.point_context_cells else None

    def forward(
        self,
        points: np.ndarray | torch.Tensor,
        reflectance: np.ndarray | torch.Tensor,
        chunk_size: int = DEFAULT_CHUNK,
        priority: np.ndarray | None = None,
    ) -> PointEncoderOutput:
        """Encode points already at ``point_voxel`` density (see ``build_point_graph`` for the frame and
        ``priority``)."""
        graph = build_point_graph(points, reflectance, self.config, priority=priority)
        return self.forward_graph(graph, chunk_size)

    def forward_graph(self, graph: PointGraph, chunk_size: int = DEFAULT_CHUNK) -> PointEncoderOutput:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        graph = graph.to(self.head.weight.device)
        x = self.embed(graph.fine.geometry)
        for block in self.down:
            x = block(x, graph.fine, chunk_size)
        # Transition down: max over each coarse point's fine neighbourhood, plus wider-scale geometry.
        pooled = self.pool(x)[graph.fine.neighbors[graph.pool_index]].amax(dim=1)
        xc = pooled + self.coarse_embed(graph.coarse.geometry)
        for block in self.coarse:
            xc = block(xc, graph.coarse, chunk_size)
        # Transition up: inverse-distance interpolation of the nearest coarse points, added to the fine features.
        up = self.up_proj(xc)[graph.up_index]  # (N, u, C)
        x = x + (graph.up_weight[..., None] * up).sum(dim=1)
        for block in self.up:
            x = block(x, graph.fine, chunk_size)
        x = self.head_norm(x)
        features = F.normalize(self.head(x), dim=-1)
        g = F.relu(self.global_proj(x)).clamp_min(1e-6)
        p = self.gem_p.clamp_min(1.0)
        gem = g.pow(p).mean(dim=0).pow(1.0 / p)
        return PointEncoderOutput(features, F.normalize(self.global_head(gem), dim=-1))

    @torch.no_grad()
    def encode_voxels(
        self,
        points_map: np.ndarray,
        reflectance: np.ndarray,
        origin: np.ndarray | None = None,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> tuple[np.ndarray, np.ndarray, PointEncoderOutput]:
        """Encode a raw map-frame cloud of any density relative to ``origin`` (the submap viewpoint, map frame):
        voxel-downsample on the map's grid, rank voxels by their map cell, encode. The same steps as a training
        frame, so map-time, run-time and training-time features agree.

        Returns the voxel centroids (M, 3) float32 in the map frame, ``inverse`` (N,) (each input point's
        voxel) and the encoder output per voxel.
        """
        pv, rv, inverse = voxel_downsample(points_map, reflectance, self.config.point_voxel)
        o = np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64).reshape(3)
        local = (pv.astype(np.float64) - o).astype(np.float32)
        out = self.forward(local, rv, chunk_size, priority=cell_priority(pv, self.config.point_voxel))
        if self.context is not None:
            out = out._replace(features=self.context.widen(pv, out.features))
        return pv, inverse, out

    @torch.no_grad()
    def encode_cloud(
        self,
        points_map: np.ndarray,
        reflectance: np.ndarray,
        origin: np.ndarray | None = None,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> PointEncoderOutput:
        """``encode_voxels``, with every input point given its voxel's features (map building)."""
        _, inverse, out = self.encode_voxels(points_map, reflectance, origin, chunk_size)
        return PointEncoderOutput(
            out.features[torch.from_numpy(inverse).to(out.features.device)], out.global_descriptor
        )
