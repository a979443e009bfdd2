"""Coordinate-wise (weighted) median."""

from __future__ import annotations

import torch

from strategies.robust.checks import check_inputs
from strategies.robust.kernels import (
    STREAM_BLOCK,
    block_width,
    column_blocks,
    is_uniform,
    map_order_statistics,
)
from strategies.robust.registry import NEEDS_INDIVIDUAL_UPDATES, RULES

__all__ = ["coordinate_median"]


@RULES.register("robust-median", family="robust", compatible=NEEDS_INDIVIDUAL_UPDATES, params=())
def coordinate_median(updates: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Coordinate-wise (weighted) median.

    Reference: D. Yin, Y. Chen, K. Ramchandran, P. Bartlett, "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates", ICML 2018, arXiv:1803.01498.

    For every coordinate the values are sorted and the weighted median is taken: the value at
    which the cumulative weight first reaches half the total. When the cumulative weight hits
    exactly one half (e.g. an even number of equally weighted clients) the two middle values
    are averaged, so with uniform weights this is the ordinary median (``median([1, 2, 100]) =
    2``, ``median([1, 2, 3, 4]) = 2.5``). Clients with zero weight never influence the result.

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.

    Returns:
        The ``(d,)`` coordinate-wise median, in ``updates.dtype``.
    """
    x, w = check_inputs(updates, weights)
    n, d = x.shape
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    if is_uniform(w):  # ordinary median: the middle order statistic(s), by a network

        def middle_value(cols: slice, rows: list[torch.Tensor]) -> None:
            if len(rows) == 1:
                out[cols] = rows[0]
            else:
                out[cols] = 0.5 * (rows[0].to(torch.float64) + rows[1].to(torch.float64))

        map_order_statistics(x, tuple(sorted({(n - 1) // 2, n // 2})), middle_value)
        return out
    total = float(w.sum())
    half, tol = 0.5 * total, 1e-9 * total
    for cols in column_blocks(d, block_width(n, d, STREAM_BLOCK)):
        values, order = torch.sort(x[:, cols], dim=0, stable=True)
        cum = torch.cumsum(w[order], dim=0)  # (n, c) cumulative weight in sorted order
        # lower: first index with cum >= half; upper: first index with cum > half (strictly).
        lower = (cum < half - tol).sum(dim=0).clamp_max(n - 1)
        upper = (cum <= half + tol).sum(dim=0).clamp_max(n - 1)
        lo = values.gather(0, lower.unsqueeze(0)).squeeze(0).to(torch.float64)
        hi = values.gather(0, upper.unsqueeze(0)).squeeze(0).to(torch.float64)
        out[cols] = 0.5 * (lo + hi)
    return out
