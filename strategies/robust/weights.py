"""The aggregation weights a robust rule may trust.

A silo's ``num-examples`` is a *claim*: the server cannot check it, and a Byzantine silo
claims whatever helps it. A weighted median, trimmed mean or geometric median weighted by
the claims is only as robust as the largest claim: one silo that claims 1 000 × the
cohort's examples *is* the weighted median, whatever it sends. So robust rules aggregate
with uniform weights (``robust.weights = "uniform"``, the default, as Flower's FedMedian,
FedTrimmedAvg, Krum and Bulyan do).

``robust.weights = "capped"`` keeps the claims for federations whose silos differ in size,
each capped at the cohort's lower median claim: a silo claiming more than the median counts
as a median silo. With at most half of the silos lying the cap is at most the largest
honest claim, so f liars weigh at most f × the median claim. The weighted rules keep their
breakdown point as long as that stays below the honest silos' total weight (e.g. one liar
among two or more honest silos); uniform weights need no such assumption.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

RobustWeights = Literal["uniform", "capped"]
#: The values of the ``robust.weights`` run-config key.
ROBUST_WEIGHTS: tuple[str, ...] = ("uniform", "capped")


def capped_at_median(claimed: torch.Tensor) -> torch.Tensor:
    """``min(claimed_i, lower median of claimed)`` for every silo, in float64.

    Args:
        claimed: ``(n,)`` finite, non-negative claimed example counts.

    Returns:
        The ``(n,)`` capped weights.
    """
    if claimed.dim() != 1 or claimed.numel() == 0:
        raise ValueError(
            f"claimed counts must be a non-empty 1-D tensor; got shape {tuple(claimed.shape)}"
        )
    w = claimed.to(torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"claimed counts must be finite and >= 0; got {claimed.tolist()}")
    return torch.clamp(w, max=float(w.median()))  # torch's median is the lower one


def trusted_weights(
    claimed: Sequence[float] | torch.Tensor, mode: RobustWeights | str
) -> torch.Tensor | None:
    """The weights a robust rule receives for the silos' ``claimed`` counts.

    ``None`` (uniform) for ``mode = "uniform"``; the claims capped at their median for
    ``"capped"`` (``None`` if every capped weight is zero: more than half of the cohort
    claims no examples, and uniform is the only weighting left that means anything).
    """
    if mode == "uniform":
        return None
    if mode != "capped":
        raise ValueError(
            f"robust.weights must be one of {ROBUST_WEIGHTS}; got {mode!r} "
            "(set run-config robust.weights = 'uniform' or 'capped')"
        )
    capped = capped_at_median(torch.as_tensor(claimed, dtype=torch.float64))
    return capped if float(capped.sum()) > 0 else None
