"""Geometric median by the smoothed Weiszfeld algorithm (RFA)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

from strategies.robust.checks import (
    check_inputs,
    check_int,
    check_positive,
)
from strategies.robust.kernels import STREAM_BLOCK, block_width, centred_gram, column_blocks
from strategies.robust.registry import NEEDS_INDIVIDUAL_UPDATES, RULES

__all__ = ["geometric_median"]


@RULES.register("geomed", family="robust", compatible=NEEDS_INDIVIDUAL_UPDATES, params=())
def geometric_median(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    max_iter: int = 100,
    eps: float = 1e-6,
    ftol: float = 1e-6,
) -> torch.Tensor:
    """Weighted geometric median by the smoothed Weiszfeld algorithm (RFA).

    Reference: K. Pillutla, S. M. Kakade, Z. Harchaoui, "Robust Aggregation for Federated
    Learning", IEEE Transactions on Signal Processing 70, 2022, arXiv:1912.13445.

    Approximately minimises ``sum_i w_i ||z - x_i||``. Starting from the weighted mean, each
    iteration sets ``beta_i = w_i / max(eps, ||z - x_i||)`` and ``z = sum_i beta_i x_i /
    sum_i beta_i``; ``eps`` smooths the objective near data points. Iteration stops after
    ``max_iter`` steps or once the objective changes by at most ``ftol`` times the weighted
    median of the distances ``||z - x_i||`` (or by no more than float64 rounding noise).

    Every iterate is a convex combination ``z = sum_i a_i x_i``, so the iterations run on the
    coefficients ``a`` with distances ``||x_i - z||^2 = (e_i - a)^T G (e_i - a)`` from the
    ``(n, n)`` Gram matrix ``G`` (computed once, as for Krum): two passes over the updates in
    total, however many iterations. ``z`` is then formed exactly and its distances measured
    exactly; if the objective from the Gram matrix and the exact one differ by more than the
    stopping tolerance (e.g. when ``z`` sits on a data point, where the Gram matrix's rounding
    error dominates a tiny distance), the iterations continue with exact distances (one pass
    over the updates each), up to another ``max_iter``.

    That scale, unlike the objective itself, cannot be inflated by a minority of far-away
    updates: with the objective as the scale (as in RFA's reference code) Byzantine updates of
    norm ``B`` stop the iteration while ``z`` is still ``~ ftol * B`` away from the
    minimiser, so the error grows with the attack's magnitude. Without outliers both scales
    are of the same order.

    Starting from the mean, the pull of far-away updates shrinks by roughly ``a / (1 - a)``
    per iteration (``a`` = their share of the weight), so the default ``max_iter`` suffices up
    to ``a ≈ 0.4``; closer to the breakdown point ``1/2`` raise ``max_iter``.

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.
        max_iter: maximum number of Weiszfeld iterations (>= 1).
        eps: smoothing constant (> 0).
        ftol: tolerance on the objective's change, relative to the weighted median distance
            (>= 0).

    Returns:
        The ``(d,)`` geometric median, in ``updates.dtype``.
    """
    x, w = check_inputs(updates, weights)
    max_iter = check_int(max_iter, "max_iter")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1; got {max_iter}")
    eps = check_positive(eps, "eps")
    if isinstance(ftol, bool) or not isinstance(ftol, numbers.Real) or not 0 <= ftol < math.inf:
        raise ValueError(f"ftol must be a real number in [0, inf); got {ftol!r}")
    w = w / w.sum()
    noise = 8 * x.shape[0] * torch.finfo(torch.float64).eps

    def close(old: float, new: float, dist: torch.Tensor) -> bool:
        return abs(old - new) <= ftol * _weighted_median(dist, w) + noise * max(old, new)

    def weiszfeld(
        dist: torch.Tensor, measure: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Iterate from distances ``dist``; ``measure(coef)`` moves z to ``coef @ x`` and
        returns its distances. Returns the last coefficients and distances."""
        coef, objective = w, float(w @ dist)
        for _ in range(max_iter):  # Weiszfeld iterations (inherently sequential)
            beta = w / dist.clamp_min(eps)
            coef = beta / beta.sum()
            dist = measure(coef)
            new_objective = float(w @ dist)
            converged = close(objective, new_objective, dist)
            objective = new_objective
            if converged:
                break
        return coef, dist

    gram = centred_gram(x)
    coef, modelled = weiszfeld(_gram_distances(gram, w), lambda c: _gram_distances(gram, c))
    z = torch.empty(x.shape[1], dtype=torch.float64, device=x.device)
    exact = _combine_and_distances(x, coef, z)
    if not close(float(w @ modelled), float(w @ exact), exact):
        weiszfeld(exact, lambda c: _combine_and_distances(x, c, z))
    return z.to(x.dtype)


def _gram_distances(gram: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``||x_i - z||`` for ``z = sum_j coef_j x_j`` (``sum coef = 1``) from the Gram matrix of
    the (equally shifted) rows: ``G_ii - 2 (G coef)_i + coef^T G coef``."""
    g_coef = gram @ coef
    sq = gram.diagonal() - 2.0 * g_coef + coef @ g_coef
    return sq.clamp_min_(0.0).sqrt_()


def _weighted_median(values: torch.Tensor, w: torch.Tensor) -> float:
    """Lower weighted median of ``values`` for weights ``w`` summing to one."""
    order = torch.argsort(values)
    below = int((torch.cumsum(w[order], dim=0) < 0.5).sum())
    return float(values[order[min(below, values.numel() - 1)]])


def _combine_and_distances(x: torch.Tensor, coef: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """One pass over ``x``: write ``z = coef @ x`` (float64, in place) and return the exact
    float64 distances ``||x_i - z||``; each column block is combined and measured while it is
    in cache."""
    n, d = x.shape
    sq = torch.zeros(n, dtype=torch.float64, device=x.device)
    for cols in column_blocks(d, block_width(n, d, STREAM_BLOCK)):
        block = x[:, cols].to(torch.float64, copy=True)
        zb = coef @ block
        z[cols] = zb
        sq += block.sub_(zb).square_().sum(dim=1)
    return sq.sqrt_()
