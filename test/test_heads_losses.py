"""Matching heads and training losses: targets are right, and each loss teaches what it should."""

import torch

from ep2p_loc_ros.model.config import ModelConfig
from ep2p_loc_ros.model.epro_pnp import MonteCarloPoseLoss
from ep2p_loc_ros.model.heads import MatchingHead, patch_centers
from ep2p_loc_ros.model.losses import make_targets, matching_losses, pose_loss, retrieval_loss

CFG = ModelConfig(image_height=64, image_width=96, feature_dim=16)


def test_heads_targets_patch_and_pixel_indices():
    uv = torch.tensor([[0.0, 0.0], [7.4, 7.4], [8.0, 0.0], [95.4, 63.4], [95.6, 10.0], [-0.6, 5.0], [3.0, 3.0]])
    visible = torch.tensor([True, True, True, True, True, True, False])
    t = make_targets(uv, visible, CFG)
    P = CFG.num_patches  # 8 x 12 grid
    assert t.patch.tolist() == [0, 0, 1, P - 1, P, P, P]
    assert t.pixel[:4].tolist() == [0, 63, 0, 63]
    centers = patch_centers(CFG)
    assert centers[0].tolist() == [3.5, 3.5] and centers[13].tolist() == [11.5, 11.5]


def test_heads_refine_returns_pixels_inside_the_chosen_patch():
    torch.manual_seed(0)
    head = MatchingHead(CFG)
    pf = torch.nn.functional.normalize(torch.randn(16, 8, 12), dim=0)
    pts = torch.nn.functional.normalize(torch.randn(50, 16), dim=1)
    idx = torch.randint(0, CFG.num_patches, (50,))
    px, logits = head.refine(pts, pf, idx)
    assert logits.shape == (50, 64)
    corner = torch.stack([idx % 12, idx // 12], 1) * 8
    assert bool(((px >= corner) & (px <= corner + 7)).all())


def test_heads_match_unrefined_gives_patch_centres_that_refine_pixels_turns_into_the_refined_ones():
    """``match(refine=False)`` + ``refine_pixels`` later (the localizer's order) = ``match()`` refining at once."""
    torch.manual_seed(2)
    head = MatchingHead(CFG)
    pf = torch.nn.functional.normalize(torch.randn(16, 8, 12), dim=0)
    pts = torch.nn.functional.normalize(torch.randn(200, 16), dim=1)
    idx, px, conf = head.match(pts, pf, max_per_patch=2)
    idx_c, centres, conf_c = head.match(pts, pf, max_per_patch=2, refine=False)
    assert idx_c.tolist() == idx.tolist()
    torch.testing.assert_close(conf_c, conf)
    assert bool(((centres - 3.5) % 8 == 0).all())  # patch centres
    assert bool((torch.floor(px / 8) == torch.floor(centres / 8)).all())  # each refined pixel in that patch
    torch.testing.assert_close(head.refine_pixels(pts[idx_c], pf, centres), px)


def test_heads_match_caps_before_refining_and_keeps_the_same_matches():
    """Capping inside ``match`` (before the pixel MLP, for speed) keeps exactly the matches a cap applied
    afterwards would keep, with the same pixels and confidences."""
    from ep2p_loc_ros.model.heads import top_per_group

    torch.manual_seed(1)
    head = MatchingHead(CFG)
    pf = torch.nn.functional.normalize(torch.randn(16, 8, 12), dim=0)
    pts = torch.nn.functional.normalize(torch.randn(400, 16), dim=1)
    idx_all, px_all, conf_all = head.match(pts, pf)
    assert len(idx_all) == 400 and bool(((conf_all > 0) & (conf_all <= 1)).all())
    # the confidence is the chosen patch's softmax probability among the image patches
    with torch.no_grad():
        prob = torch.softmax(head.patch_logits(pts, pf)[:, :-1], 1)
    torch.testing.assert_close(conf_all, prob[idx_all].max(1).values)
    patch_all = (px_all[:, 1] // 8) * 12 + px_all[:, 0] // 8
    for cap, limit in ((1, 0), (2, 0), (2, 50), (0, 30)):
        idx, px, conf = head.match(pts, pf, max_per_patch=cap, max_matches=limit)
        ref = top_per_group(patch_all, conf_all, cap) if cap else torch.arange(400)
        if limit:
            ref = ref[torch.argsort(conf_all[ref], descending=True)[:limit]]
        assert sorted(idx.tolist()) == sorted(idx_all[ref].tolist())
        order = torch.argsort(idx)
        ref_sorted = ref[torch.argsort(idx_all[ref])]
        torch.testing.assert_close(px[order], px_all[ref_sorted])
        torch.testing.assert_close(conf[order], conf_all[ref_sorted])
        if cap:
            counts = torch.bincount(((px[:, 1] // 8) * 12 + px[:, 0] // 8).long())
            assert int(counts.max()) <= cap


def test_heads_guided_match_stays_inside_the_window():
    torch.manual_seed(2)
    head = MatchingHead(CFG)
    pf = torch.nn.functional.normalize(torch.randn(16, 8, 12), dim=0)
    pts = torch.nn.functional.normalize(torch.randn(300, 16), dim=1)
    idx_g, px_g, conf_g = head.match(pts, pf)
    expected = torch.rand(300, 2) * torch.tensor([96.0, 64.0])
    expected[:20] = torch.tensor([500.0, 500.0])  # far outside the image: no patch in reach, no match
    idx, px, conf = head.match(pts, pf, expected=expected, radius=12.0)
    assert len(idx) == 280 and not bool((idx < 20).any())
    centres = patch_centers(CFG)
    chosen = ((px[:, 1] // 8) * 12 + px[:, 0] // 8).long()
    assert bool(((centres[chosen] - expected[idx]).norm(dim=1) <= 12.0).all())
    # the confidence is the softmax over the window's patches only
    with torch.no_grad():
        logits = head.patch_logits(pts, pf)[idx, :-1]
    far = (centres[None] - expected[idx][:, None]).norm(dim=2) > 12.0
    window = torch.softmax(logits.masked_fill(far, float("-inf")), 1)
    torch.testing.assert_close(conf, window.max(1).values)
    assert chosen.tolist() == window.argmax(1).tolist()
    # where the global winner is in the window it still wins, with at least its global confidence
    d_global = (centres[((px_g[:, 1] // 8) * 12 + px_g[:, 0] // 8).long()] - expected[idx_g]).norm(dim=1)
    inside = torch.nonzero(d_global <= 12.0)[:, 0]
    pos = {int(i): k for k, i in enumerate(idx)}
    assert len(inside) > 10
    for i in inside.tolist():
        k = pos[int(idx_g[i])]
        torch.testing.assert_close(px[k], px_g[i])
        assert float(conf[k]) >= float(conf_g[i]) - 1e-6


def test_heads_windowed_match_on_the_shipped_grid_equals_masking_every_patch():
    """The tracking window is matched band by band over the columns it can reach (speed); the choices and
    confidences are those of the softmax over each point's window on the full (M, P) logits, with and without the
    soft prior, for points anywhere in the image, at its borders and beyond it."""
    cfg = ModelConfig(feature_dim=16)  # the shipped network image: 640 x 192, a 24 x 80 grid of patches
    torch.manual_seed(4)
    head = MatchingHead(cfg)
    rows, cols = cfg.grid_size
    pf = torch.nn.functional.normalize(torch.randn(16, rows, cols), dim=0)
    pts = torch.nn.functional.normalize(torch.randn(1500, 16), dim=1)
    expected = torch.rand(1500, 2) * torch.tensor([800.0, 320.0]) - torch.tensor([80.0, 64.0])
    expected[:30] = torch.tensor([2000.0, 100.0])  # nothing in reach
    expected[30:60, 0] = torch.rand(30) * 8.0  # hugging the left border
    centres = patch_centers(cfg)
    d2 = ((centres[None] - expected[:, None]) ** 2).sum(2)
    for sigma in (None, torch.linspace(5.0, 60.0, 1500)):
        idx, px, conf = head.match(pts, pf, expected=expected, radius=96.0, refine=False, sigma=sigma)
        with torch.no_grad():
            logits = head.patch_logits(pts, pf)[:, :-1]
        if sigma is not None:
            logits = logits - d2 / (2 * sigma[:, None] ** 2)
        posterior = torch.softmax(logits.masked_fill(d2 > 96.0**2, float("-inf")), 1)[idx]
        reachable = torch.nonzero((d2 <= 96.0**2).any(1))[:, 0]
        assert torch.equal(idx, reachable) and not bool((idx < 30).any())
        chosen = ((px[:, 1] // 8) * cols + px[:, 0] // 8).long()
        assert chosen.tolist() == posterior.argmax(1).tolist()
        # the prior rides in the logits' float32 matrix product (in_image_logits): ~1e-4 of cancellation there
        tol = 1e-6 if sigma is None else 1e-4
        torch.testing.assert_close(conf, posterior.max(1).values, rtol=tol, atol=tol)


def test_heads_match_over_the_whole_image_equals_the_softmax_of_all_logits():
    """Without a window (no prior, or the viewpoint prior over the whole image: global matching) every point's
    patch and confidence must be those of the softmax over its row of the (M, P) logits, the prior folded into the
    matrix product included."""
    cfg = ModelConfig(feature_dim=16)
    torch.manual_seed(5)
    head = MatchingHead(cfg)
    rows, cols = cfg.grid_size
    pf = torch.nn.functional.normalize(torch.randn(16, rows, cols), dim=0)
    pts = torch.nn.functional.normalize(torch.randn(2300, 16), dim=1)
    expected = torch.rand(2300, 2) * torch.tensor([640.0, 192.0])
    sigma = torch.linspace(5.0, 80.0, 2300)
    d2 = ((patch_centers(cfg)[None] - expected[:, None]) ** 2).sum(2)
    for kw in ({}, {"expected": expected, "radius": float("inf"), "sigma": sigma}):
        idx, px, conf = head.match(pts, pf, refine=False, **kw)
        with torch.no_grad():
            logits = head.patch_logits(pts, pf)[:, :-1]
        if kw:
            logits = logits - d2 / (2 * sigma[:, None] ** 2)
        posterior = torch.softmax(logits, 1)
        assert idx.tolist() == list(range(2300))
        chosen = ((px[:, 1] // 8) * cols + px[:, 0] // 8).long()
        assert chosen.tolist() == posterior.argmax(1).tolist()
        tol = 1e-6 if not kw else 1e-4
        torch.testing.assert_close(conf, posterior.max(1).values, rtol=tol, atol=tol)


def test_heads_best_patch_by_blocks_of_rows_equals_the_whole_matrix_to_the_bit():
    """Global matching makes and reduces its logits 512 rows at a time (they stay in cache): the best patch and its
    confidence must be exactly those of the whole (M, P) matrix, for a last block of any size."""
    from ep2p_loc_ros.model.heads import _best_patch, _best_patch_of

    torch.manual_seed(8)
    for m in (511, 1300, 2048):
        point_side = torch.randn(m, 70) * 0.3
        patch_side = torch.randn(70, 1920) * 0.3
        best, conf = _best_patch_of(point_side, patch_side)
        whole_best, whole_conf = _best_patch(point_side @ patch_side)
        assert torch.equal(best, whole_best) and torch.equal(conf, whole_conf), m


def test_heads_guided_match_soft_prior_favours_patches_near_the_expected_pixel():
    """``sigma``: inside the window, the logits lose (distance / sigma)^2 / 2; a huge sigma is the window alone,
    smaller ones move choices to patches nearer the expected pixel; a sigma without expected pixels is refused."""
    import pytest

    torch.manual_seed(3)
    head = MatchingHead(CFG)
    pf = torch.nn.functional.normalize(torch.randn(16, 8, 12), dim=0)
    pts = torch.nn.functional.normalize(torch.randn(200, 16), dim=1)
    expected = torch.rand(200, 2) * torch.tensor([96.0, 64.0])
    centres = patch_centers(CFG)
    window = head.match(pts, pf, expected=expected, radius=30.0, refine=False)
    loose = head.match(pts, pf, expected=expected, radius=30.0, refine=False, sigma=torch.full((200,), 1e6))
    for a, b in zip(window, loose, strict=True):
        torch.testing.assert_close(a, b)
    sigma = torch.linspace(2.0, 40.0, 200)
    idx, px, conf = head.match(pts, pf, expected=expected, radius=30.0, refine=False, sigma=sigma)
    d2 = ((centres[None] - expected[idx][:, None]) ** 2).sum(2)
    with torch.no_grad():
        logits = head.patch_logits(pts, pf)[idx, :-1] - d2 / (2 * sigma[idx][:, None] ** 2)
    posterior = torch.softmax(logits.masked_fill(d2 > 30.0**2, float("-inf")), 1)
    chosen = ((px[:, 1] // 8) * 12 + px[:, 0] // 8).long()
    assert chosen.tolist() == posterior.argmax(1).tolist()
    torch.testing.assert_close(conf, posterior.max(1).values)
    assert torch.equal(idx, window[0])  # the same points matched (the window decides which), other patches
    changed = (window[1] != px).any(1)
    assert float(changed.float().mean()) > 0.2  # the prior changed many choices, each to a nearer patch
    dist_prior = (px - expected[idx]).norm(dim=1)
    dist_window = (window[1] - expected[idx]).norm(dim=1)
    assert bool((dist_prior[changed] < dist_window[changed]).all())
    with pytest.raises(ValueError, match="needs the expected pixels"):
        head.match(pts, pf, sigma=sigma)
    # an infinite radius: no window, the prior over the whole image (every point with an expected pixel matched)
    idx, px, conf = head.match(pts, pf, expected=expected, radius=float("inf"), refine=False, sigma=sigma)
    assert torch.equal(idx, torch.arange(200))
    d2 = ((centres[None] - expected[:, None]) ** 2).sum(2)
    with torch.no_grad():
        posterior = torch.softmax(head.patch_logits(pts, pf)[:, :-1] - d2 / (2 * sigma[:, None] ** 2), 1)
    chosen = ((px[:, 1] // 8) * 12 + px[:, 0] // 8).long()
    assert chosen.tolist() == posterior.argmax(1).tolist()
    torch.testing.assert_close(conf, posterior.max(1).values)


def test_heads_soft_prior_with_a_covariance_is_the_gaussian_penalty():
    """``sigma`` (M, 2, 2): each logit loses (c - e)ᵀ (Σ + I)⁻¹ (c - e) / 2 (one px² floor), computed inside the
    logits' matrix product; Σ = σ² I is the round prior (the same up to the floor); wrong shapes are refused."""
    import pytest

    torch.manual_seed(4)
    head = MatchingHead(CFG)
    pf = torch.nn.functional.normalize(torch.randn(16, 8, 12), dim=0)
    pts = torch.nn.functional.normalize(torch.randn(150, 16), dim=1)
    expected = torch.rand(150, 2) * torch.tensor([96.0, 64.0])
    a = torch.randn(150, 2, 2) * 6.0
    cov = a @ a.transpose(1, 2) + 0.5 * torch.eye(2)  # random elongated covariances
    centres = patch_centers(CFG)
    d = centres[None] - expected[:, None]  # (M, P, 2)
    precision = torch.linalg.inv(cov.double() + torch.eye(2, dtype=torch.float64)).float()
    penalty = 0.5 * torch.einsum("mpi,mij,mpj->mp", d, precision, d)
    with torch.no_grad():
        reference = head.patch_logits(pts, pf)[:, :-1] - penalty
        got = head.in_image_logits(pts, pf, expected, 0.5 * precision)
    torch.testing.assert_close(got, reference, atol=2e-3, rtol=1e-4)
    idx, px, conf = head.match(pts, pf, expected=expected, radius=float("inf"), refine=False, sigma=cov)
    assert torch.equal(idx, torch.arange(150))
    chosen = ((px[:, 1] // 8) * 12 + px[:, 0] // 8).long()
    assert chosen.tolist() == reference.argmax(1).tolist()
    torch.testing.assert_close(conf, torch.softmax(reference, 1).max(1).values, atol=1e-4, rtol=1e-3)
    # a round covariance is the round prior: sigma² I + I against sqrt(sigma² + 1)
    sigma = torch.linspace(2.0, 40.0, 150)
    round_cov = sigma[:, None, None] ** 2 * torch.eye(2)
    as_cov = head.match(pts, pf, expected=expected, radius=30.0, refine=False, sigma=round_cov)
    as_std = head.match(pts, pf, expected=expected, radius=30.0, refine=False, sigma=(sigma**2 + 1).sqrt())
    for x, y in zip(as_cov, as_std, strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="covariances"):
        head.match(pts, pf, expected=expected, radius=30.0, sigma=torch.ones(150, 3, 3))


def test_heads_matching_losses_train_patch_and_pixel_classification():
    """Point features that are noisy copies of their patch's feature: both losses fall, accuracy rises."""
    torch.manual_seed(0)
    head = MatchingHead(CFG)
    pf = torch.nn.functional.normalize(torch.randn(16, 8, 12), dim=0)
    uv = torch.rand(150, 2) * torch.tensor([96.0, 64.0]) - 0.5
    visible = torch.rand(150) > 0.2
    t = make_targets(uv, visible, CFG)
    inside = t.patch < CFG.num_patches
    base = torch.randn(150, 16)
    base[inside] = pf.flatten(1).T[t.patch[inside]] * 3
    feats = torch.nn.Parameter(base + 0.5 * torch.randn(150, 16))
    opt = torch.optim.Adam([feats, *head.parameters()], lr=0.02)
    first = None
    for _ in range(40):
        opt.zero_grad()
        losses = matching_losses(head, torch.nn.functional.normalize(feats, dim=1), pf, t)
        (losses["patch"] + losses["pixel"]).backward()
        opt.step()
        first = first or {k: float(v.detach()) for k, v in losses.items()}
    losses = {k: v.detach() for k, v in losses.items()}
    assert float(losses["patch"]) < 0.5 * first["patch"]
    assert float(losses["pixel"]) < 0.8 * first["pixel"]
    assert float(losses["patch_acc"]) > 0.9


def test_heads_retrieval_loss_prefers_matching_pairs():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(8, 32), dim=1)
    assert float(retrieval_loss(a, a)) < 0.1
    assert float(retrieval_loss(a, a.roll(1, 0))) > 5.0


def test_heads_pose_loss_is_lower_for_correct_matches():
    """Same head and points: features matching the true patches give a lower pose loss than shuffled ones."""
    torch.manual_seed(0)
    cfg = ModelConfig(image_height=64, image_width=96, feature_dim=16, temperature=0.05)
    head = MatchingHead(cfg)
    K = torch.tensor([[60.0, 0, 47.5], [0, 60.0, 31.5], [0, 0, 1]], dtype=torch.float64)
    X = torch.stack([torch.rand(200) * 16 - 8, torch.rand(200) * 8 - 4, torch.rand(200) * 10 + 6], 1).double()
    R, tr = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    uv = (X[:, :2] / X[:, 2:] * 60 + torch.tensor([47.5, 31.5])).float()
    t = make_targets(uv, torch.ones(200, dtype=torch.bool), cfg)
    pf = torch.nn.functional.normalize(torch.randn(16, 8, 12), dim=0)
    keep = t.patch < cfg.num_patches
    good = pf.flatten(1).T[t.patch[keep]]
    bad = good[torch.randperm(len(good))]
    scale = torch.tensor(0.0)
    g = torch.Generator().manual_seed(0)
    loss_good = pose_loss(head, good, pf, X[keep], K, R, tr, MonteCarloPoseLoss(), scale, generator=g)
    loss_bad = pose_loss(head, bad, pf, X[keep], K, R, tr, MonteCarloPoseLoss(), scale, generator=g)
    assert loss_good is not None and loss_bad is not None
    assert float(loss_good.detach()) < float(loss_bad.detach())
