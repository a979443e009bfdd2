"""Bulyan: recursive Krum selection, then a coordinate-wise average around the median."""

from __future__ import annotations

import torch

from strategies.robust.checks import check_inputs, check_num_byzantine
from strategies.robust.kernels import (
    block_width,
    column_blocks,
    is_uniform,
    krum_scores,
    pairwise_sq_distances,
    sorted_rows,
)
from strategies.robust.registry import NEEDS_INDIVIDUAL_UPDATES, RULES

__all__ = ["bulyan"]


#: Elements of one column block for comparator networks (float32 ≈ 8 MiB: the per-row
#: operations stay long enough to amortise their dispatch cost, and the block stays in cache).
_NETWORK_BLOCK = 1 << 21
#: Minimum block width of comparator networks (per-operation overhead dominates below it).
_NETWORK_MIN_WIDTH = 16384


@RULES.register(
    "robust-bulyan", family="robust", compatible=NEEDS_INDIVIDUAL_UPDATES, params=("num_byzantine",)
)
def bulyan(
    updates: torch.Tensor, weights: torch.Tensor | None = None, *, num_byzantine: int
) -> torch.Tensor:
    """Bulyan: recursive Krum selection followed by a coordinate-wise trimmed average.

    Reference: E. M. El Mhamdi, R. Guerraoui, S. Rouault, "The Hidden Vulnerability of
    Distributed Learning in Byzantium", ICML 2018, arXiv:1802.07927.

    1. Selection: ``theta = n - 2f`` updates are chosen by applying Krum recursively — each
       step picks the Krum winner among the not-yet-selected updates (scored against its
       ``max(1, r - f - 2)`` nearest remaining neighbours, ``r`` = number remaining) and removes
       it from the pool.
    2. Aggregation: for each coordinate, the ``beta = theta - 2f`` selected values closest to
       the coordinate-wise median of the selection are averaged with their clients' weights
       (uniformly if those weights are all zero).

    Requires ``n >= 4f + 3``; otherwise a ``ValueError`` names ``num_byzantine`` and the fix.

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.
        num_byzantine: ``f``, the number of Byzantine clients to tolerate.

    Returns:
        The ``(d,)`` aggregate, in ``updates.dtype``.
    """
    x, w = check_inputs(updates, weights)
    n = x.shape[0]
    f = check_num_byzantine(
        num_byzantine, n, "bulyan", lambda f: 4 * f + 3, "n >= 4*num_byzantine + 3"
    )
    theta, beta = n - 2 * f, n - 4 * f
    sq_dist = pairwise_sq_distances(x)
    remaining = torch.arange(n, device=x.device)
    chosen: list[int] = []
    for _ in range(theta):  # loop over clients: inherent to the recursive selection
        r = remaining.numel()
        sub = sq_dist[remaining][:, remaining]
        scores = krum_scores(sub, max(1, min(r - f - 2, r - 1)))
        pick = int(torch.argmin(scores))
        chosen.append(int(remaining[pick]))
        remaining = torch.cat([remaining[:pick], remaining[pick + 1 :]])
    sel = torch.tensor(chosen, device=x.device)
    return _closest_to_median_average(x, sel, w[sel], beta)


def _closest_to_median_average(
    x: torch.Tensor, sel: torch.Tensor, w_sel: torch.Tensor, beta: int
) -> torch.Tensor:
    """Bulyan's second step on the rows ``sel`` of ``x``, column block by column block.

    Per coordinate: the median ``m`` of the selected values, then the weighted average of the
    ``beta`` values with the smallest ``|v - m|`` (ties: lower position in ``sel``), uniform
    if their weights sum to zero. The ``beta``-th smallest distance ``t`` comes from a
    comparator network; values with distance ``< t`` are kept, plus the first ones (in ``sel``
    order) with distance ``== t`` up to ``beta`` in total: exactly a stable argsort's choice.
    """
    theta, d = sel.numel(), x.shape[1]
    uniform = is_uniform(w_sel)
    w_col = w_sel.to(torch.float64).unsqueeze(1)
    middle = tuple(sorted({(theta - 1) // 2, theta // 2}))
    width = block_width(theta, d, _NETWORK_BLOCK, _NETWORK_MIN_WIDTH)
    values_buf = torch.empty(theta + 1, width, dtype=x.dtype, device=x.device)
    dist_buf = torch.empty(theta, width, dtype=torch.float64, device=x.device)
    net_buf = torch.empty(theta + 1, width, dtype=torch.float64, device=x.device)
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    for cols in column_blocks(d, width):
        c = cols.stop - cols.start
        selected = x[:, cols].index_select(0, sel)  # (theta, c), rows in selection order
        block = values_buf[:theta, :c]
        block.copy_(selected)
        rows = sorted_rows(block, middle, values_buf[theta, :c])
        median = 0.5 * (rows[0].to(torch.float64) + rows[-1].to(torch.float64))
        dist = dist_buf[:, :c]
        torch.sub(selected, median, out=dist).abs_()
        scratch = net_buf[:theta, :c]
        scratch.copy_(dist)
        threshold = sorted_rows(scratch, (beta - 1,), net_buf[theta, :c])[0]
        take = dist < threshold
        tied = dist == threshold
        need = beta - take.sum(dim=0)  # >= 1: the threshold itself is among the beta closest
        if bool((tied.sum(dim=0) > need).any()):  # more ties than places: lowest positions
            tied &= torch.cumsum(tied, dim=0) <= need
        take |= tied
        kept = torch.where(take, selected.to(torch.float64), 0.0)
        if uniform:
            out[cols] = kept.sum(dim=0) / beta
        else:
            mass = torch.where(take, w_col, 0.0)
            total = mass.sum(dim=0)
            weighted = (mass * kept).sum(dim=0) / total.clamp_min(torch.finfo(torch.float64).tiny)
            out[cols] = torch.where(total > 0, weighted, kept.sum(dim=0) / beta)
    return out
