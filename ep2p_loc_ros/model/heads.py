"""Coarse-to-fine 2D matching of 3D points: patch classification, then the pixel inside the patch.

No keypoint detector: every visible map point gets a 2D match.
1. **Patch classification.** A point's feature is compared with every patch feature (cosine similarity /
   temperature); one extra learned class stands for "not in this image" (outside the frustum or hidden).
2. **Pixel refinement.** Inside the chosen patch, an MLP scores each of the ``stride²`` pixel positions from
   their positional encoding, conditioned on the point's and the patch's features; the softmax-weighted mean
   position (soft-argmax) is the sub-pixel match, differentiable for the pose loss.

Pixel coordinates here are those of the network image (pixel centres at integers): patch ``(row, col)`` covers
``u ∈ [col·s − 0.5, col·s + s − 0.5)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .config import ModelConfig

__all__ = [
    "MatchingHead",
    "half_precision",
    "patch_centers",
    "patch_index",
    "positional_encoding",
    "top_per_group",
]


def positional_encoding(xy: torch.Tensor, frequencies: int) -> torch.Tensor:
    """NeRF-style encoding of coordinates in [-1, 1]: (..., 2) -> (..., 2 + 4·frequencies)."""
    scales = (2.0 ** torch.arange(frequencies, dtype=xy.dtype, device=xy.device)) * math.pi
    angles = xy[..., None] * scales  # (..., 2, F)
    return torch.cat([xy, torch.sin(angles).flatten(-2), torch.cos(angles).flatten(-2)], -1)


def patch_centers(config: ModelConfig) -> torch.Tensor:
    """(P, 2) network-image pixel (u, v) of each patch's centre, patches in row-major order."""
    rows, cols = config.grid_size
    s = config.patch_stride
    v, u = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([u.flatten(), v.flatten()], 1).float() * s + (s - 1) / 2


def patch_index(pixels: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """(M,) row-major index of the patch holding each network-image pixel (M, 2), clamped to the grid."""
    rows, cols = config.grid_size
    s = config.patch_stride
    col = torch.clamp(torch.floor((pixels[:, 0] + 0.5) / s), 0, cols - 1).long()
    row = torch.clamp(torch.floor((pixels[:, 1] + 0.5) / s), 0, rows - 1).long()
    return row * cols + col


def top_per_group(group: torch.Tensor, score: torch.Tensor, cap: int) -> torch.Tensor:
    """Indices of the ``cap`` highest-scoring entries of each group (e.g. image patch), highest score first."""
    order = torch.argsort(score, descending=True, stable=True)
    ranked = group[order]
    sort_g = torch.argsort(ranked, stable=True)  # rank of each entry within its group, in score order
    sorted_group = ranked[sort_g]
    start = torch.ones_like(sorted_group, dtype=torch.bool)
    start[1:] = sorted_group[1:] != sorted_group[:-1]
    positions = torch.arange(len(start))
    first = torch.cummax(torch.where(start, positions, torch.zeros_like(positions)), 0).values
    rank = torch.empty_like(positions)
    rank[sort_g] = positions - first
    return order[rank < cap]


def _best_patch(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's best column and its softmax probability, 1 / sum(exp(logits - top)), computed in place.

    In place: the (M, P) matrix is the largest thing matching touches, and logsumexp would make two more passes
    over it. Clamped at -80 (each clamped patch adds < 2e-35): exp() of a result below float32's normal range takes
    a slow path, and the soft prior's penalty on far patches went there (matching took twice as long).
    The maximum and its index come from two vectorised passes (torch's ``amax`` and, on the CPU, numpy's
    ``argmax``: the first index of the maximum, like ``max``): together 2-3 ms for 4,000 x 1,920 on 2 cores, where
    ``max(1)`` with indices took 5-8 ms.
    """
    top = logits.amax(1)
    cpu = logits.device.type == "cpu"
    best = torch.from_numpy(np.argmax(logits.numpy(), axis=1)) if cpu else logits.argmax(1)
    return best, 1.0 / logits.sub_(top[:, None]).clamp_(min=-80.0).exp_().sum(1)


def _best_patch_of(
    point_side: torch.Tensor, patch_side: torch.Tensor, block: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_best_patch` of the logits ``point_side @ patch_side``, made and reduced ``block`` rows at a time on
    the CPU (the same values: each row's product and reduction do not depend on the others).

    Why: a block's logits (512 x 1,920 floats, 4 MB) stay in cache through the product and _best_patch's passes,
    where the whole (4,000 x 1,920) matrix went to memory between them: ~10 % less time (one-off microbenchmark,
    session 35). A GPU takes the whole product at once.
    """
    m = len(point_side)
    if point_side.device.type != "cpu" or m <= block:
        return _best_patch(point_side @ patch_side)
    best = torch.empty(m, dtype=torch.long)
    conf = torch.empty(m, dtype=point_side.dtype)
    for start in range(0, m, block):
        rows = slice(start, start + block)
        best[rows], conf[rows] = _best_patch(point_side[rows] @ patch_side)
    return best, conf


def _best_in_windows(
    point_side: torch.Tensor,
    patch_side: torch.Tensor,
    du2: torch.Tensor,
    dv2: torch.Tensor,
    radius2: float,
    outside: float,
    candidates: torch.Tensor,
    rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_best_patch` of the logits ``point_side @ patch_side`` with each point's patches farther than the
    window (squared distances ``du2`` (M, cols) + ``dv2`` (M, rows) > ``radius2``) set to ``outside``, computed only
    over the grid columns a window can reach.

    Why: a tracking window (96 px of a 640 px image) spans about a third of the grid's columns, so most of the
    (M, P) logits were computed, masked and exponentiated for nothing. Points are grouped by the columns their
    window reaches (bands of about a tenth of the grid); each group's logits cover the union of its windows. A
    patch left out is one the mask would have set to ``outside``, whose exp() adds < 2e-35 to a sum >= 1, so the
    result is the same as masking the whole matrix. Points that are not ``candidates`` (no patch in reach) get
    patch 0 and confidence 0.
    """
    m, cols = du2.shape
    best = torch.zeros(m, dtype=torch.long, device=point_side.device)
    conf = torch.zeros(m, dtype=point_side.dtype, device=point_side.device)
    reach = du2 <= radius2  # (M, cols): the columns each window can touch (a superset: dv2 >= 0)
    lo = reach.to(torch.int8).argmax(1)
    hi = cols - 1 - reach.flip(1).to(torch.int8).argmax(1)
    band = (lo + hi) // (2 * max(1, cols // 10))
    band = torch.where(candidates, band, -1)
    order = torch.argsort(band, stable=True)
    patches = patch_side.view(len(patch_side), rows, cols)
    start = int((band < 0).sum())
    for n in torch.bincount(band[order[start:]]).tolist():
        if n == 0:
            continue
        sel = order[start : start + n]
        start += n
        c0, c1 = int(lo[sel].min()), int(hi[sel].max()) + 1
        w = c1 - c0
        logits = point_side[sel] @ patches[:, :, c0:c1].reshape(len(patch_side), rows * w)
        far = du2[sel, None, c0:c1] > radius2 - dv2[sel, :, None]  # (n, rows, w)
        logits.view(n, rows, w).masked_fill_(far, outside)
        b, conf[sel] = _best_patch(logits)
        best[sel] = b // w * cols + c0 + b % w
    return best, conf


def half_precision(sigma: torch.Tensor) -> torch.Tensor:
    """The soft prior's weights: 1 / (2 sigma²) for standard deviations (M,), Σ⁻¹ / 2 for covariances (M, 2, 2).

    Floored at 1 px (an eighth of a patch: tighter changes no choice): sigma clamped, or one px² added to Σ.
    """
    if sigma.dim() == 1:
        return 0.5 / sigma.clamp_min(1.0) ** 2
    if sigma.dim() != 3 or sigma.shape[1:] != (2, 2):
        raise ValueError(f"sigma must be standard deviations (M,) or covariances (M, 2, 2), got {tuple(sigma.shape)}")
    a, b, c, d = (sigma[:, 0, 0] + 1.0, sigma[:, 0, 1], sigma[:, 1, 0], sigma[:, 1, 1] + 1.0)
    det = (a * d - b * c).clamp_min(1e-12)  # a covariance plus the identity: det >= 1
    return 0.5 * torch.stack([torch.stack([d, -b], 1), torch.stack([-c, a], 1)], 1) / det[:, None, None]


class MatchingHead(nn.Module):
    """Point-to-patch classifier and in-patch pixel regressor."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d, h, s = config.feature_dim, config.refine_hidden, config.patch_stride
        self.outside = nn.Parameter(torch.randn(d) / math.sqrt(d))
        self.logit_scale = 1.0 / config.temperature
        # In-patch pixel offsets (row-major over the s x s positions), and their encoding in [-1, 1].
        dy, dx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        offsets = torch.stack([dx.flatten(), dy.flatten()], 1).float()
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer(
            "offset_pe", positional_encoding(offsets / (s - 1) * 2 - 1, config.pe_frequencies), persistent=False
        )
        self.pe_proj = nn.Linear(self.offset_pe.shape[1], h)
        self.feat_proj = nn.Linear(2 * d, h)
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    def patch_logits(
        self,
        point_features: torch.Tensor,
        patch_features: torch.Tensor,
        expected: torch.Tensor | None = None,
        inv2s2: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(M, D) x (D, rows, cols) -> (M, P + 1) logits; the last column is "not in this image". With
        ``expected`` / ``inv2s2``, the image patches carry the soft prior of :meth:`in_image_logits`."""
        outside = nn.functional.normalize(self.outside, dim=0)[:, None]
        inside = self.in_image_logits(point_features, patch_features, expected, inv2s2)
        return torch.cat([inside, point_features @ outside * self.logit_scale], 1)

    def in_image_logits(
        self,
        point_features: torch.Tensor,
        patch_features: torch.Tensor,
        expected: torch.Tensor | None = None,
        inv2s2: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(M, P) logits of the image patches only (run-time matching: no copy of an (M, P + 1) matrix).

        With ``expected`` (M, 2) network pixels and ``inv2s2`` (M,) = 1 / (2 sigma²), each logit also loses
        inv2s2 · |patch centre - expected|², the soft prior of :meth:`match`; with ``inv2s2`` (M, 2, 2) = Σ⁻¹ / 2
        (an anisotropic prior of covariance Σ), it loses (c - e)ᵀ inv2s2 (c - e). That penalty is bilinear in
        (point, patch), so it rides in the same matrix product as a few more columns instead of a second pass over
        the (M, P) logits (coordinates relative to the image centre keep float32's cancellation error ~1e-3).
        """
        point_side, patch_side = self._logit_factors(point_features, patch_features, expected, inv2s2)
        return point_side @ patch_side

    def _logit_factors(
        self,
        point_features: torch.Tensor,
        patch_features: torch.Tensor,
        expected: torch.Tensor | None,
        inv2s2: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, K) and (K, P) whose product is :meth:`in_image_logits` (features, then the prior's columns)."""
        patch_side = patch_features.flatten(1) * self.logit_scale  # (D, P)
        if inv2s2 is None:
            return point_features, patch_side
        if expected is None:
            raise ValueError("a prior sigma needs the expected pixels")
        prior_points, prior_patches = self._prior_columns(expected.to(patch_side.dtype), inv2s2.to(patch_side.dtype))
        return torch.cat([point_features, prior_points], 1), torch.cat([patch_side, prior_patches], 0)

    def _prior_columns(self, expected: torch.Tensor, inv2s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, K) and (K, P) factors whose product is minus the soft prior's penalty (see :meth:`in_image_logits`)."""
        centres = patch_centers(self.config).to(device=expected.device, dtype=expected.dtype)
        middle = centres.mean(0)
        c, e, w = centres - middle, expected - middle, inv2s2
        if w.dim() == 1:  # isotropic: -w |c - e|² = 2w e·c - w |c|² - w |e|²
            w = w[:, None]
            points = torch.cat([2 * w * e, -w, -w * (e**2).sum(1, keepdim=True)], 1)
            return points, torch.cat([c.T, (c**2).sum(1)[None], torch.ones_like(c[:, :1]).T], 0)
        # -(c - e)ᵀ A (c - e) = 2 (A e)·c - A_uu c_u² - 2 A_uv c_u c_v - A_vv c_v² - eᵀ A e
        ae = (w @ e[:, :, None])[:, :, 0]  # (M, 2)
        quad = torch.stack([-w[:, 0, 0], -(w[:, 0, 1] + w[:, 1, 0]), -w[:, 1, 1], -(ae * e).sum(1)], 1)
        monomials = torch.stack([c[:, 0] ** 2, c[:, 0] * c[:, 1], c[:, 1] ** 2, torch.ones_like(c[:, 0])], 0)
        return torch.cat([2 * ae, quad], 1), torch.cat([c.T, monomials], 0)

    def pixel_logits(self, point_features: torch.Tensor, patch_features_at: torch.Tensor) -> torch.Tensor:
        """(M, D), (M, D) features of each point's patch -> (M, stride²) scores of the in-patch positions."""
        cond = self.feat_proj(torch.cat([point_features, patch_features_at], 1))  # (M, H)
        hidden = cond[:, None, :] + self.pe_proj(self.offset_pe)[None]  # (M, s², H)
        return self.mlp(hidden)[..., 0]

    def refine(
        self, point_features: torch.Tensor, patch_features: torch.Tensor, patch_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sub-pixel (u, v) in the network image for each point in its patch ``patch_index`` (M,) in [0, P).

        Returns the soft-argmax pixels (M, 2) and the in-patch logits (M, stride²).
        """
        cols = self.config.grid_size[1]
        s = self.config.patch_stride
        feats_at = patch_features.flatten(1).T[patch_index]  # (M, D)
        logits = self.pixel_logits(point_features, feats_at)
        offset = torch.softmax(logits, 1) @ self.offsets  # (M, 2) in [0, s-1]
        corner = torch.stack([patch_index % cols, patch_index // cols], 1).to(offset.dtype) * s
        return corner + offset, logits

    @torch.no_grad()
    def match(
        self,
        point_features: torch.Tensor,
        patch_features: torch.Tensor,
        min_confidence: float = 0.0,
        max_per_patch: int = 0,
        max_matches: int = 0,
        expected: torch.Tensor | None = None,
        radius: float | None = None,
        refine: bool = True,
        sigma: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run-time matching: indices of matched points, their network-image pixels (K, 2), confidences (K,).

        The points come out of IPR, so they are taken as visible: each gets its most likely *in-image* patch, and
        its confidence is that patch's probability given that the point is in the image (softmax over the patches
        only). Using the "not in this image" class as a hard filter instead would throw away every point whose
        patch mass is spread over a few look-alike patches, which is exactly where PnP's RANSAC does the sorting.
        ``max_per_patch`` keeps the most confident matches of each patch and ``max_matches`` the most confident
        overall (0: no limit); both are applied before pixel refinement, so only kept matches pay for the MLP.
        Guided matching: with ``expected`` (M, 2) pixels and ``radius`` (``inf``: no window), a point may only match
        patches whose centre lies within ``radius`` of its expected pixel (points with no such patch or no finite
        expected pixel get no match), and the confidence is the softmax over those patches. With ``sigma`` (M,) as
        well, a Gaussian prior on the distance to the expected pixel (standard deviation ``sigma`` network pixels
        per point) is added to the window's logits: a patch near where the guess projects the point beats a
        slightly likelier look-alike farther away. ``sigma`` (M, 2, 2) is a covariance (network pixels²) instead:
        an elongated prior, e.g. along the ray a forward offset moves the point (see ``localizer.prior_cov_px``).
        ``refine=False``: the pixels are the patch centres (:meth:`refine_pixels` refines some of them later).
        """
        inv2s2 = None if sigma is None else half_precision(sigma.to(point_features.dtype))
        point_side, patch_side = self._logit_factors(point_features, patch_features, expected, inv2s2)
        candidates = torch.ones(len(point_side), dtype=torch.bool, device=point_side.device)
        if expected is None:
            best, conf = _best_patch_of(point_side, patch_side)
        else:
            if radius is None or not radius > 0:
                raise ValueError(f"guided matching needs a positive radius, got {radius}")
            # Squared distance to each patch centre, separable over the grid's columns and rows: two small
            # (M, cols) / (M, rows) tables (a full (M, P) distance matrix cost more than the logits themselves).
            rows, cols = self.config.grid_size
            e = expected.to(point_side.dtype)
            centres = patch_centers(self.config).to(e.dtype)  # row-major: first row's u, first column's v
            du2 = (e[:, :1] - centres[:cols, 0]) ** 2  # (M, cols)
            dv2 = (e[:, 1:] - centres[::cols, 1]) ** 2  # (M, rows)
            candidates = du2.min(1).values + dv2.min(1).values <= radius**2
            if math.isfinite(radius):
                # 40 below the smallest logit a window patch can have (Cauchy-Schwarz on the features, the prior's
                # largest penalty in the window): a masked patch never wins the max and adds < exp(-40) to the
                # softmax sum. Finite, so that a point with no patch in its window gets no NaN.
                bound = float(point_features.norm(dim=1).max() * patch_features.flatten(1).norm(dim=0).max())
                outside = -bound * self.logit_scale - 40.0
                if inv2s2 is not None:  # the trace bounds a 2x2 precision's largest eigenvalue
                    outside -= (
                        float((inv2s2 if inv2s2.dim() == 1 else inv2s2.diagonal(0, 1, 2).sum(1)).max()) * radius**2
                    )
                best, conf = _best_in_windows(point_side, patch_side, du2, dv2, radius**2, outside, candidates, rows)
            else:  # an infinite radius: the whole image, the soft prior alone
                best, conf = _best_patch_of(point_side, patch_side)
        idx = torch.nonzero((conf >= min_confidence) & candidates)[:, 0]
        if max_per_patch > 0:
            idx = idx[top_per_group(best[idx], conf[idx], max_per_patch)]
        if 0 < max_matches < len(idx):
            idx = idx[torch.argsort(conf[idx], descending=True)[:max_matches]]
        if not refine:
            return idx, patch_centers(self.config)[best[idx]], conf[idx]
        pixels, _ = self.refine(point_features[idx], patch_features, best[idx])
        return idx, pixels, conf[idx]

    @torch.no_grad()
    def refine_pixels(
        self, point_features: torch.Tensor, patch_features: torch.Tensor, pixels: torch.Tensor
    ) -> torch.Tensor:
        """Refined network-image pixels (M, 2) of points matched at ``pixels`` (M, 2): each inside the patch that
        holds its pixel (e.g. the patch centre that ``match(..., refine=False)`` gave).

        Why separate: refining costs an MLP pass over stride² positions per match, and PnP keeps only a few
        hundred of the thousand-odd matches; the localizer refines those once the coarse pose is known.
        """
        return self.refine(point_features, patch_features, patch_index(pixels, self.config))[0]
