"""Per-round contribution of each silo: leave-one-out and GTG-Shapley, as pure functions.

A round's *game*: the players are the silos whose updates the round accepted; the value
``v(S)`` of a subset ``S`` is the utility (e.g. the server test accuracy) of the sub-model
"previous global model + weighted mean of the updates of ``S``", and ``v(∅)`` is the
previous global model's utility. Both scores reconstruct sub-models from the round's updates;
nothing is retrained.

* **Leave-one-out** (:func:`leave_one_out`): ``v(N) − v(N ∖ {i})``; ``n + 1`` evaluations.
* **GTG-Shapley** (:func:`gtg_shapley`; Z. Liu, Y. Chen, H. Yu, Y. Liu, L. Cui,
  "GTG-Shapley: Efficient and Accurate Participant Contribution Evaluation in Federated
  Learning", ACM TIST 13(4), 2022): the Shapley value by Monte-Carlo permutation sampling,
  with *guided sampling* (permutation ``k`` starts with player ``k mod n``, the rest in a
  seeded random order, so every player leads equally often) and two truncations: the whole
  round scores 0 when ``|v(N) − v(∅)| < ε`` (the round changed nothing worth dividing), and
  inside a permutation the players after a prefix ``S`` with ``|v(N) − v(S)| < ε`` get a
  marginal contribution of 0 without evaluating anything. Sampling stops after
  ``max_permutations`` permutations, or earlier when a full cycle of ``n`` guided
  permutations changed the estimates by less than ``tolerance`` (mean absolute change over
  mean absolute estimate). **Budget:** at most ``2 + max_permutations · (n − 1)`` utility
  evaluations per round (the last prefix of every permutation is ``N``), and never more
  than ``2^n``: :class:`CachedUtility` evaluates each subset once.

:func:`quality_weights` turns running scores into aggregation weights (see its doc).
Everything here is deterministic for a given ``numpy.random.Generator``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch

P = TypeVar("P", bound=Hashable)
Utility = Callable[[frozenset], float]

__all__ = [
    "CachedUtility",
    "cap_weights",
    "exact_shapley",
    "gtg_shapley",
    "leave_one_out",
    "quality_weights",
    "rank",
    "submodel_utility",
]


class CachedUtility:
    """``utility`` evaluated at most once per subset; :attr:`evaluations` counts the real
    evaluations (the budget actually spent)."""

    def __init__(self, utility: Utility) -> None:
        self.utility = utility
        self.values: dict[frozenset, float] = {}

    @property
    def evaluations(self) -> int:
        return len(self.values)

    def __call__(self, subset: frozenset) -> float:
        subset = frozenset(subset)
        if subset not in self.values:
            self.values[subset] = float(self.utility(subset))
        return self.values[subset]


def leave_one_out(players: Sequence[P], utility: Utility) -> dict[P, float]:
    """``{i: v(N) − v(N ∖ {i})}`` over ``players`` = N (``utility`` takes a frozenset)."""
    full = frozenset(players)
    v_full = utility(full)
    return {p: v_full - utility(full - {p}) for p in players}


def exact_shapley(players: Sequence[P], utility: Utility) -> dict[P, float]:
    """The exact Shapley value by enumerating all ``n!`` orders (a reference for small n)."""
    players = list(players)
    phi = dict.fromkeys(players, 0.0)
    orders = list(itertools.permutations(players))
    for order in orders:
        prefix: frozenset = frozenset()
        before = utility(prefix)
        for p in order:
            prefix = prefix | {p}
            now = utility(prefix)
            phi[p] += now - before
            before = now
    return {p: v / len(orders) for p, v in phi.items()}


def gtg_shapley(
    players: Sequence[P],
    utility: Utility,
    *,
    rng: np.random.Generator,
    max_permutations: int,
    truncation: float,
    tolerance: float = 0.05,
) -> dict[P, float]:
    """GTG-Shapley estimate of each player's Shapley value (see module doc: guided
    permutations drawn from ``rng``, between-round and within-permutation truncation at
    ``truncation`` = ε, at most ``max_permutations`` permutations, early stop at
    ``tolerance``; 0 = sample the whole budget). ``utility`` takes a frozenset of players
    and should be a :class:`CachedUtility`. The estimates add up to ``v(N) − v(∅)`` within
    ``truncation`` (exactly, up to float rounding, when ``truncation`` = 0), whatever the
    number of permutations sampled."""
    if max_permutations < 1:
        raise ValueError(f"max_permutations must be ≥ 1, got {max_permutations}")
    players = list(players)
    n = len(players)
    if n == 0:
        return {}
    v_empty = utility(frozenset())
    v_full = utility(frozenset(players))
    phi = dict.fromkeys(players, 0.0)
    if abs(v_full - v_empty) < truncation:  # between-round truncation
        return phi
    checkpoint = dict(phi)
    for k in range(max_permutations):
        first = players[k % n]
        rest = [p for p in players if p != first]
        order = [first, *(rest[i] for i in rng.permutation(len(rest)))]
        prefix: frozenset = frozenset()
        before = v_empty
        for p in order:
            prefix = prefix | {p}
            # within-permutation truncation: the prefix is already as good as N
            now = utility(prefix) if abs(v_full - before) >= truncation else before
            phi[p] += (now - before - phi[p]) / (k + 1)  # running mean over permutations
            before = now
        if tolerance > 0 and (k + 1) % n == 0 and k + 1 >= 2 * n:
            scale = sum(abs(v) for v in phi.values()) / n
            change = sum(abs(phi[p] - checkpoint[p]) for p in players) / n
            if scale > 0 and change / scale < tolerance:
                break
            checkpoint = dict(phi)
        elif (k + 1) % n == 0:
            checkpoint = dict(phi)
    return phi


def submodel_utility(
    reference: torch.Tensor,
    deltas: torch.Tensor,
    weights: Sequence[float],
    evaluate: Callable[[torch.Tensor], float],
) -> Utility:
    """The round's value function over row indices of ``deltas`` (n × d, updates minus the
    previous global ``reference``, d): ``v(S) = evaluate(reference + Σ_S w_i δ_i / Σ_S w_i)``
    and ``v(∅) = evaluate(reference)``; a subset whose weights sum to 0 is averaged
    uniformly."""
    w = torch.as_tensor(list(weights), dtype=torch.float64)

    def utility(subset: frozenset) -> float:
        if not subset:
            return float(evaluate(reference))
        idx = sorted(subset)
        ws = w[idx]
        ws = ws / ws.sum() if float(ws.sum()) > 0 else torch.full_like(ws, 1.0 / len(idx))
        mean = (ws.to(deltas.dtype)[:, None] * deltas[idx]).sum(dim=0)
        return float(evaluate(reference + mean))

    return utility


def quality_weights(
    examples: Sequence[float],
    scores: Sequence[float | None],
    *,
    cap: float,
    floor: float,
) -> list[float]:
    """Aggregation weights ``w_i = n_i · f_i``, capped so that no silo weighs more than
    ``cap`` × the mean weight.

    ``n_i`` are the claimed example counts, ``scores`` the silos' running contribution
    scores (``None`` = not scored yet). With ``r_i = max(s_i, 0)`` (an unscored silo gets
    the mean ``r`` of the scored ones, i.e. it is treated as average), the quality factor
    is ``f_i = max(r_i / mean(r), floor)``; if no silo has a positive score, ``f_i = 1``.
    The cap then lowers the largest weights to ``c`` such that ``c = cap · mean(w')``
    (``w' = min(w, c)``, solved exactly), so ``max w' ≤ cap · mean(w')`` holds.
    """
    if cap < 1:
        raise ValueError(f"cap must be ≥ 1 (a mean is never below the largest weight); got {cap}")
    if not examples:
        return []
    factors = quality_factors(scores, floor=floor)
    w = [max(float(e), 0.0) * f for e, f in zip(examples, factors, strict=True)]
    return cap_weights(w, cap)


def quality_factors(scores: Sequence[float | None], *, floor: float) -> list[float]:
    """Each silo's quality factor ``f_i = max(r_i / mean(r), floor)`` with ``r_i = max(s_i,
    0)``; an unscored silo (``None``) gets the mean ``r`` of the scored ones (it is treated
    as average); all factors are 1 when no silo has a positive score."""
    scored = [max(s, 0.0) for s in scores if s is not None]
    neutral = sum(scored) / len(scored) if scored else 0.0
    r = [neutral if s is None else max(s, 0.0) for s in scores]
    mean_r = sum(r) / len(r) if r else 0.0
    return [max(x / mean_r, floor) for x in r] if mean_r > 0 else [1.0] * len(r)


def cap_weights(weights: Sequence[float], cap: float) -> list[float]:
    """``min(w_i, c)`` with the largest ``c`` such that no capped weight exceeds ``cap`` ×
    their mean (unchanged when none does)."""
    w = [float(x) for x in weights]
    n = len(w)
    total = sum(w)
    if n == 0 or total <= 0 or max(w) <= cap * total / n:
        return w
    desc = sorted(w, reverse=True)
    for k in range(1, n):  # cap the k largest at c = cap · (rest + k c) / n
        rest = math.fsum(desc[k:])
        c = cap * rest / (n - cap * k) if n > cap * k else math.inf
        if desc[k] <= c:
            return [min(x, c) for x in w]
    return [desc[-1]] * n  # cap = 1 (up to rounding): all equal to the smallest


def rank(values: Mapping[P, float]) -> dict[P, int]:
    """1 = highest value; ties share order by key."""
    order = sorted(values, key=lambda p: (-values[p], p))
    return {p: i + 1 for i, p in enumerate(order)}
