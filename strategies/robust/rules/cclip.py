"""Centered clipping (CClip) around the previous aggregate."""

from __future__ import annotations

import torch

from strategies.robust.checks import (
    check_inputs,
    check_int,
    check_positive,
    check_vector,
)
from strategies.robust.kernels import STREAM_BLOCK, block_width, column_blocks
from strategies.robust.registry import NEEDS_INDIVIDUAL_UPDATES, RULES

__all__ = ["centered_clipping"]


@RULES.register(
    "cclip",
    family="robust",
    compatible=NEEDS_INDIVIDUAL_UPDATES,
    params=("tau",),
    uses_previous=True,
)
def centered_clipping(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    center: torch.Tensor | None = None,
    tau: float | None = 10.0,
    n_iter: int = 1,
) -> torch.Tensor:
    """Centered clipping (CClip) around a reference point.

    Reference: S. P. Karimireddy, L. He, M. Jaggi, "Learning from History for Byzantine Robust
    Optimization", ICML 2021, arXiv:2012.10333.

    Repeats ``n_iter`` times ``v <- v + sum_i (w_i / W) * clip_tau(x_i - v)`` with
    ``clip_tau(u) = u * min(1, tau / ||u||)``, starting at ``v = center``. In the paper the
    center is the previous round's aggregate (server momentum); this function is stateless, so
    callers pass it, and ``None`` means the zero vector. ``tau = inf`` disables clipping and
    returns the weighted mean (for any center).

    ``tau = None`` picks the radius from the round itself: the median of the distances
    ``||x_i - center||`` (unweighted). A fixed τ has to match the scale of honest updates,
    which depends on the model, the learning rate and the local epochs (the authors' τ = 10
    is for single stochastic gradients); with fewer than n/2 Byzantine updates the median
    distance is at most the largest honest distance, so Byzantine updates cannot inflate the
    radius beyond the honest scale, and at least half of the updates are clipped to it.

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.
        center: ``(d,)`` starting point, typically the previous aggregate; ``None`` = zeros.
        tau: clipping radius in ``(0, inf]`` (default 10, as in the authors' code), or
            ``None`` for the median distance of the updates from ``center``.
        n_iter: number of clipping iterations (>= 1).

    Returns:
        The ``(d,)`` aggregate, in ``updates.dtype``.
    """
    x, w = check_inputs(updates, weights)
    d = x.shape[1]
    if tau is not None:
        tau = check_positive(tau, "tau", allow_inf=True)
    n_iter = check_int(n_iter, "n_iter")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1; got {n_iter}")
    if center is None:
        v = torch.zeros(d, dtype=torch.float64, device=x.device)
    else:
        # a copy: v is updated in place and must not alias the caller's tensor
        v = check_vector(center, d, "center", x.device).clone()
    w = w / w.sum()
    norms = _row_distances(x, v)
    if tau is None:
        tau = float(norms.quantile(0.5))  # even n: the mean of the two middle distances
        if tau == 0.0:  # every update equals the centre
            return v.to(x.dtype)
    for i in range(n_iter):
        scale = (tau / norms).clamp_max(1.0)  # norm 0 -> inf -> 1 (diff is 0 anyway)
        # v <- v + sum_i c_i (x_i - v), fused with the distances to the new v when needed.
        norms = _shift_and_distances(x, w * scale, v, measure=i + 1 < n_iter)
    return v.to(x.dtype)


def _row_distances(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Float64 ``||x_i - v||`` for every row, one column block at a time."""
    n, d = x.shape
    sq = torch.zeros(n, dtype=torch.float64, device=x.device)
    for cols in column_blocks(d, block_width(n, d, STREAM_BLOCK)):
        block = x[:, cols].to(torch.float64, copy=True)
        sq += block.sub_(v[cols]).square_().sum(dim=1)
    return sq.sqrt_()


def _shift_and_distances(
    x: torch.Tensor, coef: torch.Tensor, v: torch.Tensor, measure: bool
) -> torch.Tensor:
    """In one pass: ``v += coef @ (x - v)`` in place (float64) and, if ``measure``, the
    distances ``||x_i - v_new||`` (else zeros)."""
    n, d = x.shape
    sq = torch.zeros(n, dtype=torch.float64, device=x.device)
    for cols in column_blocks(d, block_width(n, d, STREAM_BLOCK)):
        block = x[:, cols].to(torch.float64, copy=True)
        vb = v[cols]
        block.sub_(vb)
        delta = coef @ block
        vb += delta
        if measure:
            sq += block.sub_(delta).square_().sum(dim=1)
    return sq.sqrt_()
