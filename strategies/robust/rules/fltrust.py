"""FLTrust: trust-score-weighted average of norm-aligned updates."""

from __future__ import annotations

import torch

from strategies.robust.checks import check_inputs, check_vector
from strategies.robust.kernels import row_norms_and_dots, weighted_rows_average
from strategies.robust.registry import NEEDS_INDIVIDUAL_UPDATES, RULES

__all__ = ["fltrust"]


@RULES.register(
    "fltrust",
    family="robust",
    compatible=NEEDS_INDIVIDUAL_UPDATES,
    params=(),
    needs_server_update=True,
)
def fltrust(
    updates: torch.Tensor, server_update: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """FLTrust: trust-score-weighted average of norm-aligned updates.

    Reference: X. Cao, M. Fang, J. Liu, N. Z. Gong, "FLTrust: Byzantine-robust Federated
    Learning via Trust Bootstrapping", NDSS 2021, arXiv:2012.13995.

    The server computes ``server_update`` ``g0`` on a small clean root dataset. Client ``i``
    gets trust score ``TS_i = ReLU(cos(x_i, g0))`` (0 if ``x_i`` or ``g0`` is the zero vector),
    its update is rescaled to ``||g0||`` and the result is ``sum_i TS_i w_i (||g0|| / ||x_i||)
    x_i / sum_i TS_i w_i``. Optional ``weights`` multiply the trust scores (the paper uses
    uniform weights).

    If every effective score is zero (all updates orthogonal or opposite to ``g0``), **the zero
    vector is returned**: no client is trusted, so the global model is left unchanged.

    Note the signature differs from the other rules (it needs ``server_update``, so FLTrust is
    registered with ``needs_server_update=True``); call it directly or pass ``server_update=``
    by keyword.

    Args:
        updates: ``(n, d)`` stacked client updates.
        server_update: ``(d,)`` update computed by the server on its root dataset.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.

    Returns:
        The ``(d,)`` aggregate, in ``updates.dtype``.
    """
    x, w = check_inputs(updates, weights)
    d = x.shape[1]
    g0 = check_vector(server_update, d, "server_update", x.device)
    g0_norm = torch.linalg.vector_norm(g0)
    norms, dots = row_norms_and_dots(x, g0)
    assert dots is not None
    tiny = torch.finfo(torch.float64).tiny
    cos = dots / (norms * g0_norm).clamp_min(tiny)
    scores = torch.where((norms > 0) & (g0_norm > 0), cos.clamp_min(0.0), 0.0) * w
    total = float(scores.sum())
    if total <= 0.0:
        return torch.zeros(d, dtype=x.dtype, device=x.device)
    coeff = scores * g0_norm / norms.clamp_min(tiny) / total
    return weighted_rows_average(x, coeff)
