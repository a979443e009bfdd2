"""Norm bounding: clip every update's L2 norm, then average."""

from __future__ import annotations

import torch

from strategies.robust.checks import check_inputs, check_positive
from strategies.robust.kernels import row_norms_and_dots, weighted_rows_average
from strategies.robust.registry import NEEDS_INDIVIDUAL_UPDATES, RULES

__all__ = ["norm_clipping"]


@RULES.register(
    "norm-clip", family="robust", compatible=NEEDS_INDIVIDUAL_UPDATES, params=("max_norm",)
)
def norm_clipping(
    updates: torch.Tensor, weights: torch.Tensor | None = None, *, max_norm: float
) -> torch.Tensor:
    """Norm bounding: clip every update to L2 norm ``max_norm``, then take the weighted mean.

    Reference: Z. Sun, P. Kairouz, A. T. Suresh, H. B. McMahan, "Can You Really Backdoor
    Federated Learning?", NeurIPS 2019 FL workshop, arXiv:1911.07963.

    Each ``x_i`` becomes ``x_i * min(1, max_norm / ||x_i||)``. The result's norm is at most
    ``max_norm``, bounding any single client's influence by ``w_i / W * max_norm``.

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.
        max_norm: clipping threshold in ``(0, inf]``.

    Returns:
        The ``(d,)`` aggregate, in ``updates.dtype``.
    """
    x, w = check_inputs(updates, weights)
    max_norm = check_positive(max_norm, "max_norm", allow_inf=True)
    scale = (max_norm / row_norms_and_dots(x)[0]).clamp_max(1.0)
    return weighted_rows_average(x, (w / w.sum()) * scale)
