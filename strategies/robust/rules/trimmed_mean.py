"""Coordinate-wise trimmed mean."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from strategies.robust.checks import check_inputs, check_num_byzantine
from strategies.robust.kernels import (
    STREAM_BLOCK,
    block_width,
    column_blocks,
    coordinatewise_average,
    is_uniform,
    map_order_statistics,
    weighted_average,
)
from strategies.robust.registry import NEEDS_INDIVIDUAL_UPDATES, RULES

__all__ = ["trimmed_mean"]


# The factory passes beta from the run config's trim-beta; behind NNM it passes no beta and
# num_byzantine (which NNM takes too) reaches this rule instead.
@RULES.register(
    "robust-trimmed-mean", family="robust", compatible=NEEDS_INDIVIDUAL_UPDATES, params=("beta",)
)
def trimmed_mean(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    num_byzantine: int | None = None,
    beta: float | None = None,
) -> torch.Tensor:
    """Coordinate-wise trimmed mean.

    Reference: D. Yin, Y. Chen, K. Ramchandran, P. Bartlett, "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates", ICML 2018, arXiv:1803.01498.

    For every coordinate, the ``k`` largest and ``k`` smallest values are discarded and the
    remaining ``n - 2k`` values are averaged with their clients' weights (uniformly if those
    weights are all zero for that coordinate). Give exactly one of

    * ``num_byzantine = f``: ``k = f``, requires ``n > 2f``;
    * ``beta`` in ``[0, 0.5)``: ``k = floor(beta * n)`` (the paper's beta-trimmed mean).

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.
        num_byzantine: number of values trimmed at each end of every coordinate.
        beta: fraction trimmed at each end.

    Returns:
        The ``(d,)`` trimmed mean, in ``updates.dtype``.
    """
    x, w = check_inputs(updates, weights)
    n = x.shape[0]
    if (num_byzantine is None) == (beta is None):
        raise ValueError(
            "trimmed_mean needs exactly one of num_byzantine or beta; got "
            f"num_byzantine={num_byzantine!r}, beta={beta!r}"
        )
    if num_byzantine is not None:
        k = check_num_byzantine(
            num_byzantine, n, "trimmed_mean", lambda f: 2 * f + 1, "n > 2*num_byzantine"
        )
    else:
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
            raise ValueError(f"beta must be a real number in [0, 0.5); got {beta!r}")
        if not 0.0 <= float(beta) < 0.5:
            raise ValueError(f"beta must be in [0, 0.5); got {beta!r}")
        k = math.floor(float(beta) * n)
    if k == 0:
        return weighted_average(x, w)
    d = x.shape[1]
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    if is_uniform(w):  # plain mean of the middle order statistics, by a network

        def middle_mean(cols: slice, rows: Sequence[torch.Tensor]) -> None:
            if isinstance(rows, torch.Tensor):  # (m × c) on CPU: NumPy adds the rows one
                # after the other, as the loop below (cheaper per operation than torch)
                values = rows.numpy()
                acc = values[0].astype(np.float64)
                for row in values[1:]:
                    acc += row
                total = torch.from_numpy(acc)
            else:
                total = torch.zeros(cols.stop - cols.start, dtype=torch.float64, device=x.device)
                for row in rows:
                    total += row
            out[cols] = total / (n - 2 * k)

        map_order_statistics(x, tuple(range(k, n - k)), middle_mean)
        return out
    kept = slice(k, n - k)
    for cols in column_blocks(d, block_width(n, d, STREAM_BLOCK)):
        values, order = torch.sort(x[:, cols], dim=0, stable=True)
        out[cols] = coordinatewise_average(values[kept], w[order[kept]])
    return out
