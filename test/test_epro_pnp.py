"""Differentiable PnP: LM solution, Monte-Carlo normaliser, and what the KL loss teaches the weights."""

import math

import numpy as np
import torch

from ep2p_loc_ros.geometry import rotvec_to_matrix
from ep2p_loc_ros.model.epro_pnp import MonteCarloPoseLoss, lm_solve, reprojection_cost, rotvec_to_matrix_torch

K = torch.tensor([[718.0, 0, 607], [0, 718, 185], [0, 0, 1]], dtype=torch.float64)


def _scene(n: int = 200, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.stack(
        [torch.rand(n, generator=g) * 20 - 10, torch.rand(n, generator=g) * 4 - 2, torch.rand(n, generator=g) * 30 + 5],
        1,
    ).double()
    R = rotvec_to_matrix_torch(torch.tensor([0.01, 0.02, -0.01], dtype=torch.float64))
    t = torch.tensor([0.1, 0.0, 0.2], dtype=torch.float64)
    Xc = X @ R.T + t
    uv = Xc[:, :2] / Xc[:, 2:] * 718.0 + torch.tensor([607.0, 185.0], dtype=torch.float64)
    return X, R, t, uv, g


def test_epro_pnp_rotvec_matches_numpy():
    for r in ([0.0, 0.0, 0.0], [1e-7, 0, 0], [0.3, -1.2, 2.0]):
        np.testing.assert_allclose(
            rotvec_to_matrix_torch(torch.tensor(r, dtype=torch.float64)).numpy(),
            rotvec_to_matrix(np.array(r)),
            atol=1e-12,
        )


def test_epro_pnp_lm_converges_from_perturbed_start():
    X, R, t, uv, _ = _scene()
    R0 = rotvec_to_matrix_torch(torch.tensor([0.05, -0.04, 0.03], dtype=torch.float64)) @ R
    sol = lm_solve(X, uv, torch.ones_like(uv), K, R0, t + torch.tensor([0.5, -0.3, 1.0], dtype=torch.float64))
    assert torch.allclose(sol.R, R, atol=1e-8) and torch.allclose(sol.t, t, atol=1e-7)
    assert float(sol.cost) < 1e-12


def test_epro_pnp_monte_carlo_normaliser_matches_laplace():
    """Near the optimum the pose likelihood is almost Gaussian: log Z ≈ −f* + 3 log 2π − ½ log det H."""
    X, R, t, uv, g = _scene()
    x2d = uv + torch.randn(uv.shape, generator=g, dtype=torch.float64)
    w = torch.ones_like(uv)
    sol = lm_solve(X, x2d, w, K, R, t)
    laplace = -sol.cost + 3 * math.log(2 * math.pi) - 0.5 * torch.logdet(sol.hessian)
    loss, _ = MonteCarloPoseLoss(num_samples=512)(X, x2d, w, K, R, t, generator=torch.Generator().manual_seed(3))
    log_z = loss - reprojection_cost(R, t, X, x2d, w, K)
    assert abs(float(log_z - laplace)) < 0.1


def test_epro_pnp_loss_grows_with_correspondence_noise():
    X, R, t, uv, g = _scene()
    losses = []
    for noise in (0.5, 2.0, 8.0):
        x2d = uv + noise * torch.randn(uv.shape, generator=g, dtype=torch.float64)
        loss, _ = MonteCarloPoseLoss()(X, x2d, torch.ones_like(uv), K, R, t, generator=torch.Generator().manual_seed(0))
        losses.append(float(loss))
    assert losses[0] < losses[1] < losses[2]


def test_epro_pnp_loss_teaches_weights_to_ignore_outliers():
    """Gradient descent on log-weights alone: inliers end up with much larger weights than outliers."""
    X, R, t, uv, g = _scene(n=120, seed=1)
    x2d = uv + 0.5 * torch.randn(uv.shape, generator=g, dtype=torch.float64)
    outlier = torch.arange(120) % 4 == 0
    x2d[outlier] += 30 * torch.randn((int(outlier.sum()), 2), generator=g, dtype=torch.float64)
    log_w = torch.zeros(120, 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([log_w], lr=0.1)
    loss_fn = MonteCarloPoseLoss(num_samples=128)
    first = None
    for step in range(60):
        opt.zero_grad()
        loss, _ = loss_fn(X, x2d, log_w.exp().expand(-1, 2), K, R, t, generator=torch.Generator().manual_seed(step))
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert float(loss.detach()) < first
    w = log_w.detach().exp()[:, 0]
    assert float(w[~outlier].median()) > 3 * float(w[outlier].median())


def test_epro_pnp_huber_kernel_resists_gross_outliers():
    """30 % of the 2D points 100 px off: plain least squares is dragged away, the Huber LM is not."""
    X, R, t, uv, g = _scene(n=200, seed=4)
    x2d = uv + 0.5 * torch.randn(uv.shape, generator=g, dtype=torch.float64)
    bad = torch.arange(200) % 10 < 3
    x2d[bad] += 100.0
    w = torch.ones_like(uv)
    plain = lm_solve(X, x2d, w, K, R, t, iterations=50)
    robust = lm_solve(X, x2d, w, K, R, t, iterations=50, huber_delta=2.0)
    assert float(torch.linalg.norm(robust.t - t)) < 0.3 * float(torch.linalg.norm(plain.t - t))
    assert float(torch.linalg.norm(robust.t - t)) < 0.05
    cost_h = reprojection_cost(R, t, X, x2d, w, K, huber_delta=2.0)
    assert float(cost_h) < float(reprojection_cost(R, t, X, x2d, w, K))
