"""Benchmark run-time patch matching (``MatchingHead.match``) against a plain torch reference of the same maths.

The reference builds the (M, P) logits, subtracts the soft prior's full (M, P) penalty matrix, masks the window
with -inf and takes ``torch.softmax``: the obvious way to write it. ``match`` folds the prior into the logits'
matrix product (four more columns), keeps ``exp`` off float32's subnormal slow path, and computes a window's
logits only over the grid columns it can reach (bands of points, ``heads._best_in_windows``). Both get the shipped
model's grid (80 x 24 patches of a 640 x 192 network image), 4,000 points with unit features, expected pixels
over the image and the tracking prior's spread at depths 3-60 m (``prior_sigma_px``, 1 m / 3 deg), or the
viewpoint prior's covariance there (``prior_cov_px``, the default offsets; six more columns). The table says how
often both pick the same patch and how far their confidences are apart.

    .venv/bin/python bench/bench_matching.py          # ~20 s on 2 cores
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ep2p_loc_ros.localizer import prior_cov_px, prior_sigma_px  # noqa: E402
from ep2p_loc_ros.model.heads import MatchingHead, patch_centers  # noqa: E402
from ep2p_loc_ros.model.network import read_model_config  # noqa: E402


def reference(
    head: MatchingHead,
    points: torch.Tensor,
    patch: torch.Tensor,
    expected: torch.Tensor | None,
    radius: float,
    sigma: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best patch and its softmax probability per point, the straightforward way."""
    logits = head.in_image_logits(points, patch)
    if expected is not None:
        d = patch_centers(head.config)[None] - expected[:, None]
        d2 = (d**2).sum(2)
        if sigma is not None and sigma.dim() == 3:  # a covariance per point: the Mahalanobis penalty
            precision = torch.linalg.inv(sigma + torch.eye(2))
            logits = logits - 0.5 * torch.einsum("mpi,mij,mpj->mp", d, precision, d)
        elif sigma is not None:
            logits = logits - d2 / (2 * sigma.clamp_min(1.0)[:, None] ** 2)
        logits = logits.masked_fill(d2 > radius**2, -math.inf)
    conf, best = torch.softmax(logits, 1).max(1)
    return best, conf


def timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg, _ = read_model_config(ROOT / "models")
    rows, cols = cfg.grid_size
    torch.manual_seed(0)
    head = MatchingHead(cfg)
    patch = torch.nn.functional.normalize(torch.randn(cfg.feature_dim, rows, cols), dim=0)
    m = args.points
    points = torch.nn.functional.normalize(torch.randn(m, cfg.feature_dim), dim=1)
    size = torch.tensor([cols * cfg.patch_stride, rows * cfg.patch_stride], dtype=torch.float32)
    expected = torch.rand(m, 2) * size
    depth = np.random.default_rng(0).uniform(3.0, 60.0, m)
    focal = 718.0 * cfg.image_width / 1241.0  # KITTI's focal length at the network image's scale
    sigma = torch.from_numpy(prior_sigma_px(depth, focal, 1.0, 3.0))
    # the viewpoint prior after retrieval: points at those depths, spread by the default viewpoint offsets
    from ep2p_loc_ros.geometry import PinholeCamera

    cam = PinholeCamera(
        int(size[0]), int(size[1]), np.array([[focal, 0, size[0] / 2], [0, focal, size[1] / 2], [0, 0, 1]])
    )
    rays = np.c_[(expected.numpy() - cam.K[:2, 2]) / focal, np.ones(m)] * depth[:, None]
    cov = torch.from_numpy(prior_cov_px(rays, cam, (0.5, 0.2, 3.0), (0.0, 2.0, 0.0)))
    cases = {
        "no prior": (None, math.inf, None),
        "window 96 px": (expected, 96.0, None),
        "soft prior, whole image (global)": (expected, math.inf, sigma),
        "window 96 px + soft prior (tracking)": (expected, 96.0, sigma),
        "shaped prior, whole image (global)": (expected, math.inf, cov),
    }
    print(f"# Patch matching, {m} points x {rows * cols} patches, {args.threads} threads\n")
    print("| case | reference (ms) | match (ms) | ratio | same patch | max conf difference |")
    print("|---|---|---|---|---|---|")
    for name, (exp, radius, sig) in cases.items():
        kw = {} if exp is None else {"expected": exp, "radius": radius, "sigma": sig}
        t_ref, (best, conf) = timed(
            lambda e=exp, r=radius, s=sig: reference(head, points, patch, e, r, s), args.repeats
        )
        t_new, (idx, px, conf_new) = timed(lambda kw=kw: head.match(points, patch, refine=False, **kw), args.repeats)
        chosen = (px[:, 1] // cfg.patch_stride * cols + px[:, 0] // cfg.patch_stride).long()
        same = float((chosen == best[idx]).float().mean())
        diff = float((conf_new - conf[idx]).abs().max())
        print(f"| {name} | {t_ref:.1f} | {t_new:.1f} | {t_new / t_ref:.2f} | {same:.1%} | {diff:.1e} |")


if __name__ == "__main__":
    main()
