"""Differentiable PnP as a pose distribution, trained with a Monte-Carlo KL loss (after EPro-PnP, CVPR 2022).

The weighted reprojection cost ``f(y) = 1/2 Σ_i ||w_i ∘ (π(y, X_i) − x_i)||²`` of a pose ``y`` defines a
distribution ``p(y) = exp(−f(y)) / Z``. Training minimises the KL divergence from a Dirac at the true pose to it:

    L = f(y_gt) + log Z,        Z = ∫ exp(−f(y)) dy

``f(y_gt)`` pulls the correspondences of the true pose together; ``log Z`` pushes probability mass away from every
other pose, so weights learn to be high where the 2D points are right and low elsewhere. ``Z`` has no closed
form: it is estimated by importance sampling around the Levenberg–Marquardt solution with a proposal shaped
by the inverse Gauss–Newton Hessian (a defensive mixture of two Gaussians, so heavy tails are covered).
Gradients reach the 2D points and weights through both terms; the sampled poses themselves are constants.

Poses are ``T_cam_world`` parameterised as ``y = (t, r)``: translation and a rotation vector; samples are
drawn in the local chart around the solution, ``R = Exp(δr) R*`` and ``t = t* + δt``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["MonteCarloPoseLoss", "PoseSolution", "lm_solve", "reprojection_cost", "rotvec_to_matrix_torch"]


def _skew(v: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(v[..., 0])
    return torch.stack(
        [
            torch.stack([z, -v[..., 2], v[..., 1]], -1),
            torch.stack([v[..., 2], z, -v[..., 0]], -1),
            torch.stack([-v[..., 1], v[..., 0], z], -1),
        ],
        -2,
    )


def rotvec_to_matrix_torch(r: torch.Tensor) -> torch.Tensor:
    """Batched Rodrigues (..., 3) -> (..., 3, 3), smooth at zero (Taylor terms below 1e-4 rad)."""
    theta2 = (r * r).sum(-1, keepdim=True)[..., None]
    theta = theta2.clamp_min(1e-12).sqrt()
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    K = _skew(r)
    eye = torch.eye(3, dtype=r.dtype, device=r.device).expand(K.shape)
    return eye + a * K + b * (K @ K)


def _project(R: torch.Tensor, t: torch.Tensor, X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Pixels of world points X (N, 3) for poses (..., 3, 3), (..., 3) -> (..., N, 2); depth clamped > 0."""
    Xc = X @ R.transpose(-1, -2) + t[..., None, :]
    z = Xc[..., 2:3].clamp_min(1e-3)
    xy = Xc[..., :2] / z
    return xy * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])


def _huber(sq: torch.Tensor, delta: float | None) -> torch.Tensor:
    """Per-point cost from squared weighted residual norms: ½e² inside ``delta``, linear outside (None: ½e²)."""
    if delta is None:
        return 0.5 * sq
    e = sq.clamp_min(1e-30).sqrt()
    return torch.where(e <= delta, 0.5 * sq, delta * (e - 0.5 * delta))


def reprojection_cost(
    R: torch.Tensor,
    t: torch.Tensor,
    X: torch.Tensor,
    x2d: torch.Tensor,
    w2d: torch.Tensor,
    K: torch.Tensor,
    huber_delta: float | None = None,
) -> torch.Tensor:
    """``f(y) = Σ ρ(||w ∘ r||)`` for each pose in the batch (...,); ρ = ½e² or Huber with ``huber_delta``.

    The Huber kernel keeps wrong matches (hundreds of pixels off) from dominating the cost with their square,
    as in EPro-PnP.
    """
    r = (_project(R, t, X, K) - x2d) * w2d
    return _huber((r * r).sum(-1), huber_delta).sum(-1)


@dataclass(frozen=True)
class PoseSolution:
    R: torch.Tensor  # (3, 3)
    t: torch.Tensor  # (3,)
    hessian: torch.Tensor  # (6, 6) Gauss–Newton Hessian of f at the solution, local chart (δt, δr)
    cost: torch.Tensor  # ()


def _residual_jacobian(R, t, X, x2d, w2d, K, huber_delta=None):
    """Weighted residuals (2N,), their Jacobian (2N, 6) w.r.t. (δt, δr) with R ← Exp(δr) R, and the cost.

    With a Huber kernel, residual and Jacobian rows are scaled by √(ρ'(e)/e) (iteratively reweighted least
    squares), so Gauss–Newton on them minimises the Huber cost.
    """
    RX = X @ R.T
    Xc = RX + t
    z = Xc[:, 2].clamp_min(1e-3)
    fx, fy = K[0, 0], K[1, 1]
    uv = torch.stack([fx * Xc[:, 0] / z + K[0, 2], fy * Xc[:, 1] / z + K[1, 2]], 1)
    res = ((uv - x2d) * w2d).reshape(-1)
    zeros = torch.zeros_like(z)
    d_uv_dXc = torch.stack(
        [
            torch.stack([fx / z, zeros, -fx * Xc[:, 0] / z**2], 1),
            torch.stack([zeros, fy / z, -fy * Xc[:, 1] / z**2], 1),
        ],
        1,
    )  # (N, 2, 3)
    dXc = torch.cat([torch.eye(3, dtype=X.dtype, device=X.device).expand(len(X), 3, 3), -_skew(RX)], 2)  # (N, 3, 6)
    J = (d_uv_dXc @ dXc) * w2d[:, :, None]
    sq = (res.reshape(-1, 2) ** 2).sum(1)
    cost = _huber(sq, huber_delta).sum()
    if huber_delta is not None:
        scale = torch.where(
            sq <= huber_delta**2, torch.ones_like(sq), (huber_delta / sq.clamp_min(1e-30).sqrt()).sqrt()
        )
        res = (res.reshape(-1, 2) * scale[:, None]).reshape(-1)
        J = J * scale[:, None, None]
    return res, J.reshape(-1, 6), cost


@torch.no_grad()
def lm_solve(
    X: torch.Tensor,
    x2d: torch.Tensor,
    w2d: torch.Tensor,
    K: torch.Tensor,
    R0: torch.Tensor,
    t0: torch.Tensor,
    iterations: int = 20,
    huber_delta: float | None = None,
) -> PoseSolution:
    """Levenberg–Marquardt on the weighted (Huber) cost from ``(R0, t0)`` (float64; no autograd)."""
    X, x2d, w2d, K = (a.detach().double() for a in (X, x2d, w2d, K))
    R, t = R0.detach().double().clone(), t0.detach().double().clone()
    lam = 1e-3
    res, J, cost = _residual_jacobian(R, t, X, x2d, w2d, K, huber_delta)
    for _ in range(iterations):
        H = J.T @ J
        g = J.T @ res
        step = -torch.linalg.solve(H + lam * torch.diag(torch.diagonal(H).clamp_min(1e-9)), g)
        R_new = rotvec_to_matrix_torch(step[3:]) @ R
        t_new = t + step[:3]
        res_new, J_new, cost_new = _residual_jacobian(R_new, t_new, X, x2d, w2d, K, huber_delta)
        if cost_new < cost:
            R, t, res, J, cost = R_new, t_new, res_new, J_new, cost_new
            lam = max(lam / 10, 1e-9)
            if step.abs().max() < 1e-10:
                break
        else:
            lam *= 10
            if lam > 1e8:
                break
    return PoseSolution(R=R, t=t, hessian=J.T @ J, cost=cost)


class MonteCarloPoseLoss(torch.nn.Module):
    """KL loss between a Dirac at the true pose and the pose distribution of weighted correspondences."""

    def __init__(
        self, num_samples: int = 256, wide_scale: float = 3.0, lm_iterations: int = 15, huber_delta: float | None = None
    ) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.wide_scale = wide_scale
        self.lm_iterations = lm_iterations
        self.huber_delta = huber_delta

    def forward(
        self,
        X: torch.Tensor,
        x2d: torch.Tensor,
        w2d: torch.Tensor,
        K: torch.Tensor,
        R_gt: torch.Tensor,
        t_gt: torch.Tensor,
        R_init: torch.Tensor | None = None,
        t_init: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, PoseSolution]:
        """Loss for one image: X (N, 3) world points, x2d (N, 2) pixels, w2d (N, 2) > 0 weights; GT ``T_cam_world``."""
        dtype = x2d.dtype
        sol = lm_solve(
            X,
            x2d,
            w2d,
            K,
            R_gt if R_init is None else R_init,
            t_gt if t_init is None else t_init,
            self.lm_iterations,
            self.huber_delta,
        )
        # Proposal: mixture of N(0, Σ) and N(0, s²Σ), Σ = H⁻¹ (regularised so a flat direction stays finite).
        eye = torch.eye(6, dtype=sol.hessian.dtype, device=sol.hessian.device)
        H = sol.hessian + 1e-6 * eye * sol.hessian.diagonal().mean().clamp_min(1.0)
        L = torch.linalg.cholesky(torch.linalg.inv(H))
        n, s = self.num_samples, self.wide_scale
        # drawn by the (CPU) generator, then moved: the same samples on any device, and a checkpointable state
        eps = torch.randn(n, 6, dtype=H.dtype, generator=generator).to(H.device)
        scale = torch.ones(n, 1, dtype=H.dtype, device=H.device)
        scale[n // 2 :] = s
        delta = (eps * scale) @ L.T
        logdet = torch.log(torch.diagonal(L)).sum()
        # log q(δ) of the 50/50 mixture, evaluated for every sample under both components.
        m1 = ((eps * scale) ** 2).sum(1)  # Mahalanobis distance² of δ under Σ
        log_n1 = -0.5 * m1 - logdet - 3 * math.log(2 * math.pi)
        log_n2 = -0.5 * m1 / s**2 - logdet - 6 * math.log(s) - 3 * math.log(2 * math.pi)
        log_q = torch.logsumexp(torch.stack([log_n1, log_n2]), 0) - math.log(2.0)
        R_s = (rotvec_to_matrix_torch(delta[:, 3:]) @ sol.R).to(dtype)
        t_s = (sol.t + delta[:, :3]).to(dtype)
        cost_samples = reprojection_cost(R_s, t_s, X.to(dtype), x2d, w2d, K.to(dtype), self.huber_delta)
        log_z = torch.logsumexp(-cost_samples - log_q.to(dtype), 0) - math.log(n)
        cost_gt = reprojection_cost(
            R_gt.to(dtype), t_gt.to(dtype), X.to(dtype), x2d, w2d, K.to(dtype), self.huber_delta
        )
        return cost_gt + log_z, sol
