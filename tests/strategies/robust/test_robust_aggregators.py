"""Tests for the rules in strategies.robust.rules (hand-computed examples, properties, checks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from strategies.robust import (
    AGGREGATORS,
    RULES,
    bulyan,
    centered_clipping,
    coordinate_median,
    fltrust,
    geometric_median,
    krum,
    multi_krum,
    norm_clipping,
    trimmed_mean,
    weighted_mean,
)


def t(rows: list[list[float]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# Parameters making every registered rule runnable on 15 clients with 3 Byzantine.
RULE_PARAMS: dict[str, dict[str, object]] = {
    "mean": {},
    "robust-median": {},
    "robust-trimmed-mean": {"num_byzantine": 3},
    "robust-krum": {"num_byzantine": 3},
    "robust-multikrum": {"num_byzantine": 3},
    "robust-bulyan": {"num_byzantine": 3},
    "geomed": {},
    "cclip": {"tau": 1.0},
    "norm-clip": {"max_norm": 1.0},
}
#: The rules called as ``rule(updates, weights, **params)``: all but FLTrust, which also needs
#: the server's own update (``needs_server_update``) and is tested on its own.
ROWWISE = {
    name: rule
    for name, rule in AGGREGATORS.items()
    if not RULES.get(name).extra.get("needs_server_update")
}


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_shapes() -> None:
    assert set(ROWWISE) == set(RULE_PARAMS)
    assert set(AGGREGATORS) - set(ROWWISE) == {"fltrust"}
    x = randn(15, 7)
    for name, rule in ROWWISE.items():
        out = rule(x, None, **RULE_PARAMS[name])
        assert out.shape == (7,), name
        assert out.dtype == torch.float32, name
        out64 = rule(x.double(), torch.ones(15), **RULE_PARAMS[name])
        assert out64.dtype == torch.float64, name
        torch.testing.assert_close(out64.float(), out, rtol=1e-5, atol=1e-5)


def test_rules_are_deterministic_and_do_not_touch_global_rng() -> None:
    x = randn(15, 6, seed=3)
    state = torch.random.get_rng_state()
    first = {name: rule(x, **RULE_PARAMS[name]) for name, rule in ROWWISE.items()}
    second = {name: rule(x, **RULE_PARAMS[name]) for name, rule in ROWWISE.items()}
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ROWWISE:
        assert torch.equal(first[name], second[name]), name


# ----------------------------------------------------------------------------- mean


def test_weighted_mean_hand_computed() -> None:
    x = t([[1, 2], [3, 4]])
    torch.testing.assert_close(weighted_mean(x), t([[2, 3]])[0])
    torch.testing.assert_close(weighted_mean(x, torch.tensor([1.0, 0.0])), x[0])
    torch.testing.assert_close(weighted_mean(x, torch.tensor([1.0, 3.0])), t([[2.5, 3.5]])[0])
    # Integer weights (e.g. example counts) are accepted.
    torch.testing.assert_close(weighted_mean(x, torch.tensor([0, 7])), x[1])


# ----------------------------------------------------------------------------- median


def test_coordinate_median_hand_computed() -> None:
    assert coordinate_median(t([[1], [2], [100]])).item() == 2.0
    assert coordinate_median(t([[1], [2], [3], [4]])).item() == 2.5
    # Coordinate-wise: each column independently.
    x = t([[1, 30], [2, 10], [100, 20]])
    torch.testing.assert_close(coordinate_median(x), t([[2, 20]])[0])


def test_coordinate_median_weights() -> None:
    x = t([[1], [2], [3]])
    assert coordinate_median(x, torch.tensor([1.0, 1.0, 5.0])).item() == 3.0
    assert coordinate_median(x, torch.tensor([5.0, 1.0, 1.0])).item() == 1.0
    # A zero-weight client is ignored: median of {1, 2} = 1.5.
    y = t([[1], [2], [100]])
    assert coordinate_median(y, torch.tensor([1.0, 1.0, 0.0])).item() == 1.5
    # Non-integer weights that sum to exactly half at a boundary.
    assert coordinate_median(t([[0], [10]]), torch.tensor([0.1, 0.1])).item() == 5.0


# ----------------------------------------------------------------------------- trimmed mean


def test_trimmed_mean_hand_computed() -> None:
    x = t([[1], [2], [3], [4], [100]])
    assert trimmed_mean(x, num_byzantine=1).item() == pytest.approx(3.0)
    assert trimmed_mean(x, beta=0.2).item() == pytest.approx(3.0)  # floor(0.2 * 5) = 1
    assert trimmed_mean(x, beta=0.1).item() == pytest.approx(22.0)  # k = 0: plain mean
    assert trimmed_mean(x, num_byzantine=2).item() == pytest.approx(3.0)
    cols = t([[1, -50], [2, 5], [3, 6], [-40, 7], [100, 8]])
    # col 0 sorted: -40, 1, 2, 3, 100 -> mean(1, 2, 3) = 2; col 1: mean(5, 6, 7) = 6.
    torch.testing.assert_close(trimmed_mean(cols, num_byzantine=1), t([[2, 6]])[0])


def test_trimmed_mean_weights_average_the_kept_values() -> None:
    x = t([[1], [2], [3], [4], [100]])
    w = torch.tensor([1.0, 1.0, 2.0, 0.0, 1.0])
    # Kept values 2 (w=1), 3 (w=2), 4 (w=0) -> (2 + 6) / 3.
    assert trimmed_mean(x, w, num_byzantine=1).item() == pytest.approx(8 / 3)
    # All kept weights zero -> uniform average of kept values.
    w0 = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])
    assert trimmed_mean(x, w0, num_byzantine=1).item() == pytest.approx(3.0)


def test_trimmed_mean_needs_exactly_one_of_num_byzantine_and_beta() -> None:
    x = randn(5, 2)
    with pytest.raises(ValueError, match="num_byzantine"):
        trimmed_mean(x)
    with pytest.raises(ValueError, match="beta"):
        trimmed_mean(x, num_byzantine=1, beta=0.1)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 0.5\)"):
        trimmed_mean(x, beta=0.5)
    with pytest.raises(ValueError, match="num_byzantine=3"):
        trimmed_mean(x, num_byzantine=3)  # needs n > 6


# ----------------------------------------------------------------------------- krum


def test_krum_picks_update_in_dense_cluster() -> None:
    x = t([[0, 0], [0.1, 0], [0, 0.1], [0.1, 0.1], [0.05, 0.05], [10, 10], [-10, 5]])
    before = x.clone()
    out = krum(x, num_byzantine=2)
    assert torch.equal(out, x[4])
    out[0] = 123.0  # the result is a copy, not a view into updates
    assert torch.equal(x, before)


def test_krum_range_check() -> None:
    x = randn(6, 3)
    krum(x, num_byzantine=1)  # 6 > 2*1 + 2
    with pytest.raises(ValueError, match=r"num_byzantine=2.*n > 2\*num_byzantine \+ 2"):
        krum(x, num_byzantine=2)
    with pytest.raises(ValueError, match="num_byzantine"):
        krum(randn(2, 3), num_byzantine=0)


def test_multi_krum_hand_computed() -> None:
    x = t([[0], [1], [2], [3], [100]])
    # f = 1, k = n - f - 2 = 2 neighbours; scores 5, 2, 2, 5, huge -> select 4 best.
    assert multi_krum(x, num_byzantine=1).item() == pytest.approx(1.5)
    assert multi_krum(x, num_byzantine=1, num_selected=2).item() == pytest.approx(1.5)
    assert multi_krum(x, num_byzantine=1, num_selected=1).item() == krum(x, num_byzantine=1)
    w = torch.tensor([0.0, 1.0, 3.0, 0.0, 1.0])
    assert multi_krum(x, w, num_byzantine=1, num_selected=2).item() == pytest.approx(1.75)
    with pytest.raises(ValueError, match="num_selected"):
        multi_krum(x, num_byzantine=1, num_selected=0)


# ----------------------------------------------------------------------------- bulyan


def test_bulyan_hand_computed() -> None:
    # n = 7, f = 1: recursive Krum selects {2, 3, 1, 4, 0}; median 2; beta = 3 closest
    # values {1, 2, 3} -> 2. The outlier 1000 is never selected.
    x = t([[0], [1], [2], [3], [4], [5], [1000]])
    assert bulyan(x, num_byzantine=1).item() == pytest.approx(2.0)


def test_bulyan_requires_4f_plus_3() -> None:
    x = randn(10, 3)
    bulyan(x, num_byzantine=1)
    with pytest.raises(ValueError) as info:
        bulyan(x, num_byzantine=2)  # needs n >= 11
    msg = str(info.value)
    assert "num_byzantine=2" in msg
    assert "n >= 4*num_byzantine + 3" in msg
    assert "at least 11 clients" in msg
    assert "0 <= num_byzantine <= 1" in msg


# ----------------------------------------------------------------------------- geometric median


def test_geometric_median_of_symmetric_points() -> None:
    square = t([[1, 1], [-1, 1], [1, -1], [-1, -1]])
    torch.testing.assert_close(geometric_median(square), torch.zeros(2), atol=1e-6, rtol=0)
    shifted = square + torch.tensor([3.0, -2.0])
    torch.testing.assert_close(geometric_median(shifted), torch.tensor([3.0, -2.0]))
    # In 1-D the geometric median is the median.
    assert geometric_median(t([[0], [1], [10]])).item() == pytest.approx(1.0, abs=1e-5)


def test_geometric_median_weights() -> None:
    x = t([[0, 0], [4, 0], [0, 4]])
    torch.testing.assert_close(geometric_median(x, torch.tensor([1.0, 0.0, 0.0])), x[0])
    # A majority weight at one point pins the median there.
    torch.testing.assert_close(
        geometric_median(x, torch.tensor([0.0, 3.0, 1.0])), x[1], atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geometric_median_matches_scipy(seed: int) -> None:
    x = randn(15, 4, seed=seed, dtype=torch.float64)
    xn = x.numpy()

    def objective(z: np.ndarray) -> float:
        return float(np.linalg.norm(xn - z, axis=1).sum())

    def gradient(z: np.ndarray) -> np.ndarray:
        diff = xn - z
        return -(diff / np.linalg.norm(diff, axis=1)[:, None]).sum(axis=0)

    ref = minimize(objective, xn.mean(axis=0), jac=gradient, method="BFGS", options={"gtol": 1e-12})
    tight = geometric_median(x, max_iter=1000, ftol=1e-12).numpy()
    np.testing.assert_allclose(tight, ref.x, atol=1e-4)
    assert objective(tight) <= ref.fun + 1e-9
    # Default tolerances: the objective is within 1e-5 (relative) of the optimum.
    default = geometric_median(x).numpy()
    assert objective(default) <= ref.fun * (1 + 1e-5)


def test_geometric_median_parameter_validation() -> None:
    x = randn(4, 2)
    with pytest.raises(ValueError, match="max_iter"):
        geometric_median(x, max_iter=0)
    with pytest.raises(ValueError, match="eps"):
        geometric_median(x, eps=0.0)
    with pytest.raises(ValueError, match="ftol"):
        geometric_median(x, ftol=-1.0)


# ----------------------------------------------------------------------------- clipping


def test_centered_clipping_tau_inf_equals_mean() -> None:
    x = randn(9, 5, seed=4)
    w = torch.arange(1.0, 10.0)
    center = randn(5, seed=5)
    for c in (None, center):
        for n_iter in (1, 3):
            out = centered_clipping(x, w, center=c, tau=math.inf, n_iter=n_iter)
            torch.testing.assert_close(out, weighted_mean(x, w))


def test_centered_clipping_hand_computed() -> None:
    x = t([[3, 4], [0, 0]])
    # One iteration from 0: clip (3, 4) to norm 1 -> (0.6, 0.8); mean -> (0.3, 0.4).
    torch.testing.assert_close(centered_clipping(x, tau=1.0), t([[0.3, 0.4]])[0])
    # Second iteration from v = (0.3, 0.4): diffs (2.7, 3.6) -> (0.6, 0.8) and (-0.3, -0.4)
    # (norm 0.5, unclipped); v += mean -> (0.45, 0.6).
    torch.testing.assert_close(centered_clipping(x, tau=1.0, n_iter=2), t([[0.45, 0.6]])[0])
    # Clipping around the center: updates within tau of it are averaged unchanged.
    torch.testing.assert_close(
        centered_clipping(x, center=torch.tensor([1.5, 2.0]), tau=3.0), t([[1.5, 2.0]])[0]
    )


def test_centered_clipping_validation() -> None:
    x = randn(4, 3)
    with pytest.raises(ValueError, match="tau"):
        centered_clipping(x, tau=0.0)
    with pytest.raises(ValueError, match="n_iter"):
        centered_clipping(x, tau=1.0, n_iter=0)
    with pytest.raises(ValueError, match=r"center must have shape \(3,\)"):
        centered_clipping(x, center=torch.zeros(2), tau=1.0)
    with pytest.raises(ValueError, match="center must be finite"):
        centered_clipping(x, center=torch.tensor([0.0, math.nan, 0.0]), tau=1.0)


def test_norm_clipping_hand_computed() -> None:
    x = t([[3, 4], [0, 1]])
    torch.testing.assert_close(norm_clipping(x, max_norm=1.0), t([[0.3, 0.9]])[0])
    torch.testing.assert_close(norm_clipping(x, max_norm=math.inf), weighted_mean(x))
    torch.testing.assert_close(
        norm_clipping(x, torch.tensor([1.0, 0.0]), max_norm=2.5), t([[1.5, 2.0]])[0]
    )
    with pytest.raises(ValueError, match="max_norm"):
        norm_clipping(x, max_norm=-1.0)


# ----------------------------------------------------------------------------- fltrust


def test_fltrust_ignores_opposite_update() -> None:
    server = torch.tensor([1.0, 0.0])
    x = t([[2, 0], [-5, 0], [0, 3]])
    # Trust scores 1, 0 (opposite), 0 (orthogonal); (2, 0) rescaled to norm 1.
    torch.testing.assert_close(fltrust(x, server), t([[1, 0]])[0])
    y = t([[1, 1], [-100, 0]])
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(fltrust(y, server), t([[s, s]])[0])


def test_fltrust_rescales_to_server_norm_and_uses_weights() -> None:
    server = torch.tensor([0.0, 2.0])
    x = t([[0, 100], [0, 0.01], [1, 1]])
    out = fltrust(x, server, torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(out, server)  # both trusted updates rescaled to (0, 2)


def test_fltrust_all_untrusted_returns_zeros() -> None:
    out = fltrust(t([[-1, 0], [0, 1], [0, 0]]), torch.tensor([1.0, 0.0]))
    assert torch.equal(out, torch.zeros(2))
    assert torch.equal(fltrust(t([[1, 0]]), torch.zeros(2)), torch.zeros(2))
    with pytest.raises(ValueError, match="server_update"):
        fltrust(t([[1, 0]]), torch.zeros(3))


# ----------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("byzantine_first", [False, True])
def test_robust_rules_resist_huge_byzantine_updates(byzantine_first: bool) -> None:
    honest = randn(12, 5, seed=7)
    byzantine = torch.full((3, 5), 1e6)
    x = torch.cat([byzantine, honest] if byzantine_first else [honest, byzantine])
    low, high = honest.min(dim=0).values, honest.max(dim=0).values
    honest_mean = honest.mean(dim=0)

    mean = AGGREGATORS["mean"](x)
    assert (mean - honest_mean).norm() > 1e5

    for name in (
        "robust-median",
        "robust-trimmed-mean",
        "robust-krum",
        "robust-multikrum",
        "robust-bulyan",
    ):
        out = AGGREGATORS[name](x, **RULE_PARAMS[name])
        assert bool(((out >= low - 1e-6) & (out <= high + 1e-6)).all()), name

    # The geometric median stays within the honest radius of the honest mean (f < n/2).
    radius = (honest - honest_mean).norm(dim=1).max()
    assert (AGGREGATORS["geomed"](x) - honest_mean).norm() < radius

    # Clipping from 0: the output norm is at most the threshold, so it is within
    # threshold + ||honest mean|| of the honest mean.
    for name, threshold in (("cclip", 1.0), ("norm-clip", 1.0)):
        out = AGGREGATORS[name](x, **RULE_PARAMS[name])
        assert out.norm() <= threshold + 1e-6, name
        assert (out - honest_mean).norm() <= threshold + honest_mean.norm() + 1e-6, name


def test_weights_are_respected_by_averaging_rules() -> None:
    x = t([[1, 2], [5, 6]])
    first = torch.tensor([1.0, 0.0])
    torch.testing.assert_close(weighted_mean(x, first), x[0])
    torch.testing.assert_close(coordinate_median(x, first), x[0])
    torch.testing.assert_close(geometric_median(x, first), x[0])
    torch.testing.assert_close(centered_clipping(x, first, tau=math.inf), x[0])
    torch.testing.assert_close(norm_clipping(x, first, max_norm=math.inf), x[0])
    torch.testing.assert_close(trimmed_mean(x, first, num_byzantine=0), x[0])


# ----------------------------------------------------------------------------- validation


def _call(name: str, updates: object, weights: object = None, **override: object) -> None:
    params = {**RULE_PARAMS[name], **override}
    AGGREGATORS[name](updates, weights, **params)


@pytest.mark.parametrize("name", sorted(RULE_PARAMS))
def test_invalid_updates_raise(name: str) -> None:
    good = randn(15, 3)
    nan = good.clone()
    nan[2, 1] = math.nan
    inf = good.clone()
    inf[0, 0] = math.inf
    for bad, fragment in (
        (nan, "updates must be finite"),
        (inf, "updates must be finite"),
        (good[0], "updates must be 2-D"),
        (good.unsqueeze(0), "updates must be 2-D"),
        (good.to(torch.int64), "updates must have a floating dtype"),
        (good[:, :0], "updates must hold at least one"),
        (good.numpy(), "updates must be a torch.Tensor"),
    ):
        with pytest.raises(ValueError, match=fragment):
            _call(name, bad)


@pytest.mark.parametrize("name", sorted(RULE_PARAMS))
def test_invalid_weights_raise(name: str) -> None:
    x = randn(15, 3)
    negative = torch.ones(15)
    negative[3] = -1.0
    nan = torch.ones(15)
    nan[0] = math.nan
    for bad, fragment in (
        (negative, r"weights must be non-negative"),
        (torch.zeros(15), r"weights must have a positive sum"),
        (torch.ones(14), r"weights must have shape \(15,\)"),
        (torch.ones(15, 1), r"weights must have shape \(15,\)"),
        (nan, r"weights must be finite"),
    ):
        with pytest.raises(ValueError, match=fragment):
            _call(name, x, bad)


@pytest.mark.parametrize(
    ("name", "too_many"),
    [("robust-trimmed-mean", 8), ("robust-krum", 7), ("robust-multikrum", 7), ("robust-bulyan", 4)],
)
def test_too_many_byzantine_raise(name: str, too_many: int) -> None:
    x = randn(15, 3)
    with pytest.raises(ValueError, match=rf"num_byzantine={too_many} is invalid"):
        _call(name, x, num_byzantine=too_many)
    with pytest.raises(ValueError, match="num_byzantine=-1"):
        _call(name, x, num_byzantine=-1)
    with pytest.raises(ValueError, match="num_byzantine must be an integer"):
        _call(name, x, num_byzantine=1.0)
    _call(name, x, num_byzantine=too_many - 1)  # the largest allowed value works
