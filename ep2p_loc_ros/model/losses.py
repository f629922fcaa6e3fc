"""Training losses: patch classification, in-patch pixel, retrieval, and the Monte-Carlo pose loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .epro_pnp import MonteCarloPoseLoss
from .heads import MatchingHead

__all__ = ["MatchTargets", "make_targets", "matching_losses", "pose_loss", "retrieval_loss"]


@dataclass(frozen=True)
class MatchTargets:
    """Per-point supervision in the network image."""

    patch: torch.Tensor  # (M,) long: patch index in [0, P), or P for "not in this image"
    pixel: torch.Tensor  # (M,) long: in-patch position index in [0, stride²) (meaningful where patch < P)
    uv: torch.Tensor  # (M, 2) true network-image pixel (meaningful where patch < P)


def make_targets(uv: torch.Tensor, visible: torch.Tensor, config: ModelConfig) -> MatchTargets:
    """True patch and in-patch position of each point from its true pixel; hidden/outside -> class P."""
    rows, cols = config.grid_size
    s = config.patch_stride
    pix = torch.floor(torch.nan_to_num(uv, nan=-1e6) + 0.5).long()  # pixel centres at integers
    inside = visible & (pix[:, 0] >= 0) & (pix[:, 0] < cols * s) & (pix[:, 1] >= 0) & (pix[:, 1] < rows * s)
    col, row = pix[:, 0].clamp(0, cols * s - 1) // s, pix[:, 1].clamp(0, rows * s - 1) // s
    patch = torch.where(inside, row * cols + col, torch.full_like(col, rows * cols))
    pixel = (pix[:, 1].clamp(0, rows * s - 1) % s) * s + pix[:, 0].clamp(0, cols * s - 1) % s
    return MatchTargets(patch=patch, pixel=pixel, uv=uv)


def matching_losses(
    head: MatchingHead,
    point_features: torch.Tensor,
    patch_features: torch.Tensor,
    targets: MatchTargets,
    max_pixel_points: int | None = None,
    prior: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Cross-entropy of the patch class, and of the in-patch position at the true patch (teacher forcing).

    The pixel loss uses at most ``max_pixel_points`` of the in-image points (the first ones: pass points in
    random order); its MLP runs over stride² positions per point, the costliest part of a step. ``prior``:
    (expected network pixels (M, 2), Σ⁻¹/2 (M, 2, 2)), the soft geometric prior the run time adds after
    retrieval, added here too so the classifier learns what the prior leaves open (``TrainConfig.viewpoint_prior``).
    """
    num_patches = head.config.num_patches
    logits = head.patch_logits(point_features, patch_features, *(prior or (None, None)))
    losses = {"patch": nn.functional.cross_entropy(logits, targets.patch)}
    inside = targets.patch < num_patches
    if inside.any():
        chosen = torch.nonzero(inside)[:, 0][:max_pixel_points]
        feats_at = patch_features.flatten(1).T[targets.patch[chosen]]
        pixel_logits = head.pixel_logits(point_features[chosen], feats_at)
        losses["pixel"] = nn.functional.cross_entropy(pixel_logits, targets.pixel[chosen])
    else:
        losses["pixel"] = logits.sum() * 0.0
    with torch.no_grad():
        pred = logits.argmax(1)
        losses["patch_acc"] = (
            (pred[inside] == targets.patch[inside]).float().mean() if inside.any() else logits.new_zeros(())
        )
    return losses


def retrieval_loss(
    image_descriptors: torch.Tensor, submap_descriptors: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """Symmetric InfoNCE: image i belongs with submap i and with no other submap of the batch."""
    logits = image_descriptors @ submap_descriptors.T / temperature
    labels = torch.arange(len(logits), device=logits.device)
    return 0.5 * (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels))


def pose_loss(
    head: MatchingHead,
    point_features: torch.Tensor,
    patch_features: torch.Tensor,
    points_cam_world: torch.Tensor,
    K: torch.Tensor,
    R_gt: torch.Tensor,
    t_gt: torch.Tensor,
    mc_loss: MonteCarloPoseLoss,
    weight_scale: torch.Tensor,
    max_points: int = 512,
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """EPro-PnP-style KL pose loss on the predicted matches of one image.

    2D points: each point's most likely patch (a hard choice) refined by the differentiable soft-argmax;
    weights: that patch's probability times a learned global scale. ``points_cam_world`` are the points' 3D
    coordinates in the frame the GT pose ``(R_gt, t_gt) = T_cam_world`` maps from. The KL is divided by the
    number of points used. Returns None when fewer than 6 points are available.
    """
    prob = torch.softmax(head.patch_logits(point_features, patch_features), 1)
    conf, best = prob[:, :-1].max(1)  # best in-image patch
    order = torch.argsort(conf.detach(), descending=True)[:max_points]
    if len(order) < 6:
        return None
    pixels, _ = head.refine(point_features[order], patch_features, best[order])
    weights = (conf[order] * weight_scale.exp())[:, None].expand(-1, 2)
    loss, _ = mc_loss(
        points_cam_world[order].to(pixels.dtype), pixels, weights, K.to(pixels.dtype), R_gt, t_gt, generator=generator
    )
    return loss / len(order)  # per point: comparable across images with different match counts
