"""Leave-one-out, GTG-Shapley and quality weights as pure functions, on games whose
answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from strategies.contribution.scores import (
    CachedUtility,
    cap_weights,
    exact_shapley,
    gtg_shapley,
    leave_one_out,
    quality_weights,
    submodel_utility,
)

VALUES = {"a": 0.5, "b": 0.2, "c": -0.1, "d": 0.05}


def additive(subset: frozenset) -> float:
    return sum(VALUES[p] for p in subset)


def saturating(subset: frozenset) -> float:
    """Diminishing returns plus an a-b synergy: marginal contributions depend on the order."""
    base = 1 - math.exp(-sum(max(VALUES[p], 0) * 3 for p in subset))
    return base + (0.2 if {"a", "b"} <= subset else 0.0) - (0.15 if "c" in subset else 0.0)


def test_leave_one_out_is_the_loss_without_each_player():
    players = list(VALUES)
    assert leave_one_out(players, additive) == pytest.approx(VALUES)
    loo = leave_one_out(players, saturating)
    full = saturating(frozenset(players))
    for p in players:
        assert loo[p] == pytest.approx(full - saturating(frozenset(players) - {p}))


def test_on_an_additive_game_every_estimate_is_each_players_value():
    players = list(VALUES)
    assert exact_shapley(players, additive) == pytest.approx(VALUES)
    rng = np.random.default_rng(0)
    phi = gtg_shapley(players, CachedUtility(additive), rng=rng, max_permutations=4, truncation=0.0)
    assert phi == pytest.approx(VALUES)


def test_gtg_with_enough_permutations_approaches_the_exact_shapley_value():
    players = list(VALUES)
    exact = exact_shapley(players, saturating)
    phi = gtg_shapley(
        players,
        CachedUtility(saturating),
        rng=np.random.default_rng(1),
        max_permutations=2000,
        truncation=0.0,
        tolerance=0.0,
    )
    assert phi == pytest.approx(exact, abs=0.01)
    # Efficiency: the estimates divide exactly the round's gain.
    gain = saturating(frozenset(players)) - saturating(frozenset())
    assert sum(phi.values()) == pytest.approx(gain)
    # A single guided cycle is already a fair (if rough) estimate; the synergy partners lead.
    short = gtg_shapley(
        players,
        CachedUtility(saturating),
        rng=np.random.default_rng(1),
        max_permutations=4,
        truncation=0.0,
    )
    assert sorted(short, key=short.get)[-2:] in (["b", "a"], ["a", "b"])


def test_the_budget_bounds_the_evaluations():
    values = {p: 0.1 * (p + 1) ** 0.5 for p in range(8)}

    def game(subset):
        return math.sqrt(sum(values[p] for p in subset))

    for budget in (1, 3, 10):
        counted = CachedUtility(game)
        gtg_shapley(
            list(range(8)), counted, rng=np.random.default_rng(0),
            max_permutations=budget, truncation=0.0, tolerance=0.0,
        )  # fmt: skip
        assert counted.evaluations <= 2 + budget * (8 - 1)
        assert counted.evaluations > budget  # each permutation evaluated something new
    counted = CachedUtility(game)
    gtg_shapley(
        list(range(4)), counted, rng=np.random.default_rng(0),
        max_permutations=500, truncation=0.0, tolerance=0.0,
    )  # fmt: skip
    assert counted.evaluations <= 2**4  # each subset once


def test_truncation_skips_a_round_without_gain_and_the_tail_of_a_saturated_permutation():
    flat = CachedUtility(lambda s: 0.7)
    phi = gtg_shapley(
        list("abc"), flat, rng=np.random.default_rng(0), max_permutations=50, truncation=1e-3
    )
    assert phi == {"a": 0.0, "b": 0.0, "c": 0.0} and flat.evaluations == 2

    def only_a(subset):  # a alone achieves everything
        return 1.0 if "a" in subset else 0.0

    def spent(truncation):
        counted = CachedUtility(only_a)
        phi = gtg_shapley(
            list("abcde"), counted, rng=np.random.default_rng(0),
            max_permutations=10, truncation=truncation, tolerance=0.0,
        )  # fmt: skip
        assert phi == pytest.approx({"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0, "e": 0.0})
        return counted

    truncated, full = spent(1e-3), spent(0.0)
    # Once a is in, a permutation evaluates nothing more: fewer subsets, the same answer.
    assert truncated.evaluations < full.evaluations
    assert set(truncated.values) < set(full.values)


def test_estimates_are_deterministic_for_a_seed():
    players = list(VALUES)

    def run(seed):
        return gtg_shapley(
            players, CachedUtility(saturating), rng=np.random.default_rng(seed),
            max_permutations=6, truncation=0.0, tolerance=0.0,
        )  # fmt: skip

    assert run(7) == run(7)
    assert any(run(7) != run(s) for s in range(8, 14))  # few permutations: the draw matters


def test_submodels_average_the_subsets_updates_by_weight():
    reference = torch.tensor([1.0, 0.0])
    deltas = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]])
    seen = []

    def evaluate(row):
        seen.append(row.clone())
        return float(row.sum())

    utility = submodel_utility(reference, deltas, [1.0, 3.0, 0.0], evaluate)
    assert utility(frozenset()) == pytest.approx(1.0)
    assert utility(frozenset({0, 1})) == pytest.approx(1.0 + (1.0 * 1 + 3.0 * 3) / 4)
    assert torch.allclose(seen[-1], torch.tensor([1.25, 2.25]))
    assert utility(frozenset({2})) == pytest.approx(5.0)  # weight 0 alone: uniform


def test_quality_weights_lower_a_bad_silo_and_respect_the_cap():
    examples = [100.0, 100.0, 100.0, 100.0, 100.0]
    scores = [0.05, 0.04, 0.06, -0.08, None]
    w = quality_weights(examples, scores, cap=2.0, floor=0.1)
    assert w[3] == pytest.approx(100.0 * 0.1)  # negative score: the floor
    assert w[3] < min(w[i] for i in (0, 1, 2, 4))
    assert w[4] == pytest.approx(100.0)  # not scored yet: an average silo
    assert max(w) <= 2.0 * sum(w) / len(w) + 1e-9
    # A silo claiming 50 × the examples is capped at cap × the mean weight.
    w = quality_weights([5000.0, 100.0, 100.0, 100.0], [0.05, 0.05, 0.05, 0.05], cap=2.0, floor=0.1)
    assert max(w) == pytest.approx(2.0 * sum(w) / len(w))
    # No positive score anywhere: weights are the claims.
    assert quality_weights([3.0, 4.0], [-1.0, None], cap=10.0, floor=0.1) == [3.0, 4.0]


@pytest.mark.parametrize("cap", [1.0, 1.5, 2.0, 3.0])
def test_capping_is_exact_and_only_lowers_weights(cap):
    rng = np.random.default_rng(int(cap * 10))
    for n in range(1, 9):
        for _ in range(50):
            w = (rng.random(n) ** 4 * 100).tolist()
            capped = cap_weights(w, cap)
            mean = sum(capped) / n
            assert max(capped) <= cap * mean * (1 + 1e-9)
            assert all(c <= x + 1e-12 for c, x in zip(capped, w, strict=True))
            # Only the largest are lowered, all to the same level.
            lowered = {round(c, 9) for c, x in zip(capped, w, strict=True) if c < x - 1e-12}
            assert len(lowered) <= 1
    assert cap_weights([1.0, 1.0], 1.0) == [1.0, 1.0]
