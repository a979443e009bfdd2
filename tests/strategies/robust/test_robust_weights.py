"""Robust rules do not trust the silos' self-reported ``num-examples`` (issue #16).

One silo that sends an arbitrary (huge) update and claims 1 000 × its examples must not
move any robust rule outside what the honest updates allow, through the strategies'
``aggregate_train`` on real Flower Messages, with uniform (default) and capped weights.
The same silo *does* capture a rule weighted by the raw claims, which is what the code did
before: the tests of that prove the property tests are meaningful.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from flwr.app.message import arrayrecord as flwr_arrayrecord
from flwr.serverapp.strategy import FedAvg, MultiKrum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_app.config import ConfigError, RunConfig
from fl_app.messages import train_reply
from strategies import build_strategy
from strategies.robust import coordinate_median, fltrust, geometric_median, multi_krum
from strategies.robust.strategy import RobustAggregation
from strategies.robust.weights import capped_at_median, trusted_weights

INFLATION = 1000
#: Every registered rule whose output stays in the honest box with one Byzantine silo
#: (``robust.num-byzantine = 1``; the trimmed means drop ≥ 1 value at each end).
BOX_RULES = [
    "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan", "robust-median",
    "robust-trimmed-mean", "robust-krum", "robust-multikrum", "robust-bulyan",
]  # fmt: skip
#: Rules with a distance bound instead of a box (geometric median, clipping). FLTrust is
#: covered by the weights it receives (its factory trains on the task's root data).
BALL_RULES = ["geomed", "cclip", "norm-clip"]


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


@pytest.fixture
def _no_flower_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower's Bulyan runs gc.collect() per selected record (memory hygiene only).
    monkeypatch.setattr(flwr_arrayrecord, "gc", SimpleNamespace(collect=lambda *args: 0))


def _strategy(name: str, mode: str):
    return build_strategy(RunConfig(strategy=name, robust={"num-byzantine": 1, "weights": mode}))


def _aggregate(name: str, mode: str, x: np.ndarray, claims: list[int]):
    """The new global model of ``name`` from the global model 0 and replies ``x`` (one row
    per silo, a reply's update = its model) whose silos claim ``claims`` examples."""
    strategy = _strategy(name, mode)
    if isinstance(strategy, RobustAggregation):
        strategy.round.begin(
            1, "train", ArrayRecord({"w": Array(np.zeros(x.shape[1], np.float32))})
        )
    replies = [
        train_reply(i, 100 + i, {"w": row.astype(np.float32)}, num_examples=claims[i])
        for i, row in enumerate(x)
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays["w"].numpy().astype(np.float64)


# ---------------------------------------------------------------------------- the weights
def test_capped_weights_are_the_claims_capped_at_the_lower_median():
    claimed = torch.tensor([10.0, 30.0, 20.0, 72_000.0])
    assert capped_at_median(claimed).tolist() == [10.0, 20.0, 20.0, 20.0]
    assert capped_at_median(torch.tensor([5.0, 7.0, 100.0])).tolist() == [5.0, 7.0, 7.0]
    assert trusted_weights([10, 30, 20, 72_000], "uniform") is None
    assert trusted_weights([10, 30, 20, 72_000], "capped").tolist() == [10, 20, 20, 20]
    assert trusted_weights([0, 0, 5], "capped") is None  # the median claim is 0: uniform


def test_bad_weight_modes_and_claims_are_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"robust.weights must be one of"):
        trusted_weights([1.0], "claimed")
    with pytest.raises(ValueError, match="finite and >= 0"):
        capped_at_median(torch.tensor([1.0, -2.0]))
    with pytest.raises(ConfigError, match=r"robust.weights"):
        RunConfig.from_flower({**RunConfig().to_flower(), "robust.weights": "claimed"})


@pytest.mark.parametrize("mode", ["uniform", "capped"])
@pytest.mark.parametrize(
    "name",
    ["robust-median", "robust-trimmed-mean", "robust-krum", "robust-multikrum",
     "robust-bulyan", "geomed", "cclip", "norm-clip", "fltrust"],
)  # fmt: skip
def test_every_robust_rule_receives_uniform_or_capped_weights(name, mode, monkeypatch):
    if name == "fltrust":  # its factory loads the task's root data; the class is the same
        strategy = RobustAggregation(fltrust, weights=mode)
        strategy.server_update_fn = lambda arrays, server_round: arrays
    else:
        strategy = _strategy(name, mode)
    seen = []

    def spy(updates, weights, **params):
        seen.append(weights)
        return updates[0]

    monkeypatch.setattr(strategy, "aggregate", spy)
    strategy.round.begin(1, "train", ArrayRecord({"w": Array(np.zeros(3, np.float32))}))
    claims = [50, 70, 60, 80, 60 * INFLATION, 40, 90]
    replies = [
        train_reply(i, 100 + i, {"w": np.full(3, i, np.float32)}, num_examples=c)
        for i, c in enumerate(claims)
    ]
    strategy.aggregate_train(1, replies)
    if mode == "uniform":
        assert seen == [None]
    else:
        assert seen[0].tolist() == [50, 70, 60, 70, 70, 40, 70]  # capped at the median, 70


# ------------------------------------------------------------------ the issue's concrete case
def _issue_case() -> tuple[np.ndarray, list[int], np.ndarray]:
    """15 honest silos (100 examples each, updates ≈ 0.1), one sends −1e5 and claims
    1 000 × its 100 examples."""
    rng = np.random.default_rng(16)
    honest = 0.1 + 0.01 * rng.standard_normal((15, 4))
    x = np.vstack([honest[:7], np.full((1, 4), -1e5), honest[7:]])
    claims = [100] * 7 + [100 * INFLATION] + [100] * 8
    return x, claims, honest


def test_claimed_weights_hand_the_median_and_geomed_to_the_inflating_silo():
    """What the code did before issue #16: the rule weighted by the raw claims."""
    x, claims, _ = _issue_case()
    xt, wt = torch.tensor(x, dtype=torch.float32), torch.tensor(claims, dtype=torch.float32)
    attacker = x[7]
    np.testing.assert_array_equal(coordinate_median(xt, wt).numpy(), attacker)
    gm = geometric_median(xt, wt).double().numpy()
    assert np.abs(gm - attacker).max() < 1.0  # 1e5 away from every honest update
    fedavg = _aggregate("fedavg", "uniform", x, claims)  # FedAvg trusts the claims too
    assert np.all(fedavg < -0.98e5)


@pytest.mark.parametrize("mode", ["uniform", "capped"])
@pytest.mark.parametrize("name", ["robust-median", "geomed"])
def test_the_inflating_silo_does_not_capture_median_or_geomed(name, mode):
    x, claims, honest = _issue_case()
    out = _aggregate(name, mode, x, claims)
    assert np.all(out >= honest.min(0) - 1e-6) and np.all(out <= honest.max(0) + 1e-6)


# ------------------------------------------------------------------------ property tests
@st.composite
def inflated_round(draw: st.DrawFn):
    """Honest updates, their claims, and one silo with an arbitrary huge update (norm
    ≥ 100, the honest ones ≈ √d) claiming 1 000 × its true count, at a random position."""
    n = draw(st.integers(6, 15))
    d = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    honest = rng.standard_normal((n, d))
    scale = draw(st.sampled_from([1e2, 1e4, 1e5, 1e6]))
    direction = rng.standard_normal(d)
    attacker = scale * direction / np.linalg.norm(direction)
    at = draw(st.integers(0, n))
    x = np.insert(honest, at, attacker, axis=0).astype(np.float32).astype(np.float64)
    claims = [int(c) for c in rng.integers(1, 500, n)]
    claims.insert(at, int(rng.integers(1, 500)) * INFLATION)
    return x, claims, np.delete(x, at, axis=0), at


PROPERTY = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.mark.usefixtures("_no_flower_gc")
@pytest.mark.parametrize("mode", ["uniform", "capped"])
@PROPERTY
@given(case=inflated_round())
def test_one_inflating_silo_moves_no_rule_out_of_the_honest_box(mode, case):
    x, claims, honest, _ = case
    lo, hi = honest.min(0), honest.max(0)
    tol = 1e-5 * (1 + np.abs(honest).max())
    for name in BOX_RULES:
        out = _aggregate(name, mode, x, claims)
        assert np.all(out >= lo - tol) and np.all(out <= hi + tol), (name, out, lo, hi)


def _attacker_share(claims: list[int], at: int, mode: str) -> float:
    w = trusted_weights(claims, mode)
    w = torch.ones(len(claims), dtype=torch.float64) if w is None else w
    return float(w[at] / w.sum())


@pytest.mark.parametrize("mode", ["uniform", "capped"])
@PROPERTY
@given(case=inflated_round())
def test_one_inflating_silo_moves_geomed_and_clipping_by_its_share_only(mode, case):
    """The geometric median stays within ``2 r (1 − a) / (1 − 2a)`` of the honest mean
    (``r`` = the honest radius, ``a`` = the silo's weight share: any farther point has a
    larger weighted objective). Clipping shrinks updates towards 0 (the centre in round 1),
    so its output lies in the honest box widened to 0, plus at most ``a · τ`` per
    coordinate (τ ≤ the largest honest norm for cclip, clip-norm for norm-clip). With the
    raw claims ``a`` ≈ 1 and neither bound says anything."""
    x, claims, honest, at = case
    a = _attacker_share(claims, at, mode)
    assert a < 0.5
    center = honest.mean(0)
    r = float(np.linalg.norm(honest - center, axis=1).max())
    lo0, hi0 = np.minimum(honest.min(0), 0.0), np.maximum(honest.max(0), 0.0)
    tau = {"cclip": float(np.linalg.norm(honest, axis=1).max()), "norm-clip": 1.0}
    for name in BALL_RULES:
        out = _aggregate(name, mode, x, claims)
        if name == "geomed":
            radius = 2 * r * (1 - a) / (1 - 2 * a)
            assert np.linalg.norm(out - center) <= radius + 1e-3 * (1 + r), name
        else:
            slack = a * tau[name] + 1e-5 * (1 + r)
            assert np.all(out >= lo0 - slack) and np.all(out <= hi0 + slack), name


# ------------------------------------------------------------------- Flower's MultiKrum
def test_registered_multikrum_averages_its_selection_without_the_raw_claims():
    """Flower's MultiKrum averages the selected updates by the claims: a Byzantine silo it
    selects (here one just off the honest mean) and that claims 1 000 × is the average.
    The registered ``multikrum`` averages the same selection uniformly."""
    rng = np.random.default_rng(3)
    honest = rng.standard_normal((10, 3))
    attacker = honest.mean(0) + np.array([0.3, 0.0, 0.0])
    x = np.vstack([honest, attacker]).astype(np.float32).astype(np.float64)
    claims = [60] * 10 + [60 * INFLATION]
    replies = [
        train_reply(i, 100 + i, {"w": row.astype(np.float32)}, num_examples=c)
        for i, (row, c) in enumerate(zip(x, claims, strict=True))
    ]
    flower, _ = MultiKrum(num_malicious_nodes=1, num_nodes_to_select=10).aggregate_train(1, replies)
    assert np.abs(flower["w"].numpy() - attacker).max() < 0.01  # follows the claim
    ours = _aggregate("multikrum", "uniform", x, claims)
    expected = multi_krum(torch.tensor(x, dtype=torch.float32), num_byzantine=1).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    assert np.abs(ours - attacker).max() > 0.2


def test_fedavg_is_still_weighted_by_the_claims():
    """FedAvg is not a robust rule: its weights are the claims by design (documented)."""
    x = np.array([[0.0], [1.0]])
    assert _aggregate("fedavg", "uniform", x, [1, 3])[0] == pytest.approx(0.75)
    assert isinstance(build_strategy(RunConfig()), FedAvg)
