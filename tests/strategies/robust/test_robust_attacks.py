"""Tests for strategies.robust.attacks (threat-model simulation)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from strategies.robust import (
    AGGREGATORS,
    ATTACKS,
    alie,
    alie_z,
    gaussian_noise,
    ipm,
    scaling,
    sign_flip,
)
from strategies.robust.attacks import inflate_claim


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _params(name: str) -> dict[str, object]:
    return {
        "gaussian": {"std": 2.0, "generator": torch.Generator().manual_seed(0)},
        "scaling": {"factor": 5.0},
    }.get(name, {})


def test_registry() -> None:
    expected = {
        "sign-flip": sign_flip,
        "gaussian": gaussian_noise,
        "scaling": scaling,
        "alie": alie,
        "ipm": ipm,
    }
    assert expected == ATTACKS


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_shapes_dtypes_and_zero_byzantine(name: str) -> None:
    honest = randn(8, 5)
    out = ATTACKS[name](honest, 3, **_params(name))
    assert out.shape == (3, 5)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    assert ATTACKS[name](honest.double(), 2, **_params(name)).dtype == torch.float64
    assert ATTACKS[name](honest, 0, **_params(name)).shape == (0, 5)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_invalid_inputs_raise(name: str) -> None:
    honest = randn(8, 5)
    with pytest.raises(ValueError, match="honest_updates must be 2-D"):
        ATTACKS[name](honest[0], 2, **_params(name))
    bad = honest.clone()
    bad[1, 1] = math.nan
    with pytest.raises(ValueError, match="honest_updates must be finite"):
        ATTACKS[name](bad, 2, **_params(name))
    with pytest.raises(ValueError, match="num_byzantine must be >= 0"):
        ATTACKS[name](honest, -1, **_params(name))
    with pytest.raises(ValueError, match="num_byzantine must be an integer"):
        ATTACKS[name](honest, 2.5, **_params(name))


def test_sign_flip_scaling_ipm_formulas() -> None:
    honest = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    mean = torch.tensor([2.0, 1.0])
    torch.testing.assert_close(sign_flip(honest, 2), (-mean).expand(2, 2))
    torch.testing.assert_close(scaling(honest, 1, factor=10.0), (10 * mean).unsqueeze(0))
    torch.testing.assert_close(ipm(honest, 3, epsilon=0.5), (-0.5 * mean).expand(3, 2))
    torch.testing.assert_close(ipm(honest, 1), (-0.1 * mean).unsqueeze(0))
    with pytest.raises(ValueError, match="epsilon"):
        ipm(honest, 1, epsilon=0.0)
    with pytest.raises(ValueError, match="factor"):
        scaling(honest, 1, factor=math.inf)
    # The outputs are independent tensors, not views of each other.
    out = sign_flip(honest, 2)
    out[0, 0] = 99.0
    assert out[1, 0].item() == -2.0


def test_alie_z_matches_normal_quantile() -> None:
    # n = 10, f = 2: s = floor(10/2 + 1) - 2 = 4; z = Phi^-1((10 - 4) / 10) = Phi^-1(0.6).
    assert alie_z(10, 2) == pytest.approx(norm.ppf(0.6), abs=1e-12)
    # n = 50, f = 12: s = 26 - 12 = 14; z = Phi^-1(36 / 50).
    assert alie_z(50, 12) == pytest.approx(norm.ppf(36 / 50), abs=1e-12)
    with pytest.raises(ValueError, match=r"num_byzantine=6 .*floor\(n/2\) = 5"):
        alie_z(10, 6)


def test_alie_formula() -> None:
    honest = randn(8, 6, seed=1)
    out = alie(honest, 2)
    z = norm.ppf(0.6)
    expected = honest.double().mean(dim=0) - z * honest.double().std(dim=0, correction=1)
    torch.testing.assert_close(out, expected.float().expand(2, 6))
    custom = alie(honest, 3, z=1.5)
    expected = honest.mean(dim=0) - 1.5 * honest.std(dim=0)
    torch.testing.assert_close(custom, expected.expand(3, 6))
    with pytest.raises(ValueError, match="num_byzantine=3"):
        alie(randn(2, 3), 3)  # n = 5 allows at most floor(5/2) = 2


def test_alie_stays_inside_honest_spread_and_shifts_median() -> None:
    honest = randn(20, 50, seed=2)
    byz = alie(honest, 5)
    # Each coordinate lies within one standard deviation of the honest mean (|z| < 1 here),
    # which is why distance-based defenses do not flag it ...
    mean, std = honest.mean(dim=0), honest.std(dim=0)
    assert bool(((byz - mean).abs() <= std + 1e-6).all())
    # ... yet it shifts the coordinate-wise median in the attack direction.
    clean = AGGREGATORS["robust-median"](honest)
    attacked = AGGREGATORS["robust-median"](torch.cat([honest, byz]))
    assert float(((attacked - clean) * -std).sum()) > 0


def test_gaussian_noise_is_seeded_and_has_requested_std() -> None:
    honest = randn(4, 20_000)
    a = gaussian_noise(honest, 2, std=3.0, generator=torch.Generator().manual_seed(7))
    b = gaussian_noise(honest, 2, std=3.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert a.std().item() == pytest.approx(3.0, rel=0.02)
    assert abs(a.mean().item()) < 0.1
    state = torch.random.get_rng_state()
    gaussian_noise(honest, 1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ValueError, match=r"generator must be a seeded torch\.Generator"):
        gaussian_noise(honest, 1, std=1.0, generator=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="std"):
        gaussian_noise(honest, 1, std=-1.0, generator=torch.Generator())


def test_robust_rules_beat_mean_under_sign_flip() -> None:
    honest = randn(12, 10, seed=3) + 1.0  # honest updates agree on a positive direction
    x = torch.cat([honest, sign_flip(honest, 5) * 10])
    honest_mean = honest.mean(dim=0)
    mean_err = (AGGREGATORS["mean"](x) - honest_mean).norm()
    for name, params in (
        ("robust-median", {}),
        ("robust-krum", {"num_byzantine": 5}),
        ("geomed", {}),
    ):
        err = (AGGREGATORS[name](x, **params) - honest_mean).norm()
        assert err < mean_err, name


def test_inflate_claim_multiplies_the_claimed_count() -> None:
    assert inflate_claim(72) == 72_000 and isinstance(inflate_claim(72), int)
    assert inflate_claim(72, 3.5) == 252 and isinstance(inflate_claim(72, 3.5), int)
    assert inflate_claim(2.5, 10.0) == pytest.approx(25.0)
    assert inflate_claim(0) == 0


@pytest.mark.parametrize(
    ("count", "factor", "message"),
    [
        (-1, 10.0, "num_examples must be >= 0"),
        (math.nan, 10.0, "num_examples must be a finite real number"),
        (True, 10.0, "num_examples must be a finite real number"),
        (10, 0.0, r"factor must be in \(0, inf\)"),
        (10, math.inf, r"factor must be in \(0, inf\)"),
    ],
)
def test_inflate_claim_rejects_bad_inputs(count: object, factor: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        inflate_claim(count, factor)
