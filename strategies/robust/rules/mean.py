"""FedAvg's weighted mean: the non-robust baseline."""

from __future__ import annotations

import torch

from strategies.robust.checks import check_inputs
from strategies.robust.kernels import weighted_average
from strategies.robust.registry import RULES

__all__ = ["weighted_mean"]


@RULES.register(
    "mean",
    family="mean-based",
    compatible={"central-dp": True, "secagg": True, "topk": True},
    params=(),
    strategy=False,  # FedAvg is its strategy: no generated "mean" strategy
)
def weighted_mean(updates: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted arithmetic mean ``sum_i w_i x_i / sum_i w_i`` (FedAvg; not robust).

    Reference: H. B. McMahan, E. Moore, D. Ramage, S. Hampson, B. Agüera y Arcas,
    "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017,
    arXiv:1602.05629.

    A single Byzantine client can move the result arbitrarily far; it is the non-robust baseline.

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.

    Returns:
        The ``(d,)`` weighted mean, in ``updates.dtype``.
    """
    x, w = check_inputs(updates, weights)
    return weighted_average(x, w)
