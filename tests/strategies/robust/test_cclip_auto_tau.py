"""Centred clipping with τ picked per round (``tau=None`` / ``robust.cclip-tau = 0``)."""

from __future__ import annotations

import torch

from strategies.robust import centered_clipping


def _honest(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * 0.1 + 1.0


def test_auto_tau_equals_explicit_median_distance():
    x = _honest(9, 50)
    center = torch.zeros(50, dtype=torch.float64)
    tau = float((x - center).norm(dim=1).quantile(0.5))
    auto = centered_clipping(x, center=center, tau=None)
    fixed = centered_clipping(x, center=center, tau=tau)
    assert torch.equal(auto, fixed)
    # and it really clips: half the updates are longer than τ, so the result differs from the mean
    assert not torch.allclose(auto, x.mean(dim=0))


def test_auto_tau_is_not_inflated_by_huge_byzantine_updates():
    """With f < n/2 the radius stays at the honest scale however large the attack is,
    so the aggregate moves at most τ·f/n away from the honest-only aggregate."""
    honest = _honest(14, 30, seed=1)
    center = torch.zeros(30, dtype=torch.float64)
    honest_radius = float(honest.norm(dim=1).max())
    for scale in (1e2, 1e6):
        byz = -scale * torch.ones(6, 30, dtype=torch.float64)
        out = centered_clipping(torch.cat([honest, byz]), center=center, tau=None)
        clean = centered_clipping(honest, center=center, tau=None)
        assert (out - clean).norm() <= 2 * honest_radius * 6 / 20 + 1e-9
    # whereas the authors' fixed τ = 10 lets each Byzantine update move it by 10/n
    fixed = centered_clipping(torch.cat([honest, byz]), center=center, tau=10.0)
    assert (fixed - clean).norm() > (out - clean).norm()


def test_auto_tau_with_all_updates_at_the_centre_returns_the_centre():
    center = torch.full((5,), 0.5, dtype=torch.float64)
    x = center.repeat(4, 1)
    assert torch.equal(centered_clipping(x, center=center, tau=None), center)


def test_center_is_not_modified_in_place():
    x = _honest(5, 8, seed=3)
    center = torch.zeros(8, dtype=torch.float64)
    out = centered_clipping(x, center=center, tau=0.5)
    assert torch.equal(center, torch.zeros(8, dtype=torch.float64))
    assert out.data_ptr() != center.data_ptr()
