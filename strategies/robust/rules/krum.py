"""Krum and Multi-Krum: the update(s) closest to their nearest neighbours."""

from __future__ import annotations

import torch

from strategies.robust.checks import (
    check_inputs,
    check_int,
    check_num_byzantine,
)
from strategies.robust.kernels import (
    krum_scores,
    pairwise_sq_distances,
    stable_argsort,
    weighted_average,
)
from strategies.robust.registry import NEEDS_INDIVIDUAL_UPDATES, RULES

__all__ = ["krum", "multi_krum"]


@RULES.register(
    "robust-krum", family="robust", compatible=NEEDS_INDIVIDUAL_UPDATES, params=("num_byzantine",)
)
def krum(
    updates: torch.Tensor, weights: torch.Tensor | None = None, *, num_byzantine: int
) -> torch.Tensor:
    """Krum: return the single update closest to its ``n - f - 2`` nearest neighbours.

    Reference: P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017; preprint "Byzantine-Tolerant
    Machine Learning", arXiv:1703.02757.

    The score of client ``i`` is the sum of squared Euclidean distances to its ``n - f - 2``
    closest other updates; the update with the lowest score is returned (ties: lowest index).
    Requires ``n > 2f + 2``. ``weights`` are validated but cannot change the output, which is
    one client's update.

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.
        num_byzantine: ``f``, the number of Byzantine clients to tolerate.

    Returns:
        The selected ``(d,)`` update, in ``updates.dtype``.
    """
    x, _ = check_inputs(updates, weights)
    n = x.shape[0]
    f = check_num_byzantine(
        num_byzantine, n, "krum", lambda f: 2 * f + 3, "n > 2*num_byzantine + 2"
    )
    scores = krum_scores(pairwise_sq_distances(x), n - f - 2)
    return x[int(torch.argmin(scores))].clone()


@RULES.register(
    "robust-multikrum",
    family="robust",
    compatible=NEEDS_INDIVIDUAL_UPDATES,
    params=("num_byzantine", "num_selected"),
)
def multi_krum(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    num_byzantine: int,
    num_selected: int | None = None,
) -> torch.Tensor:
    """Multi-Krum: weighted average of the ``m`` updates with the best Krum scores.

    Reference: P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017, arXiv:1703.02757
    (Multi-Krum). See also E. M. El Mhamdi, R. Guerraoui, S. Rouault,
    "The Hidden Vulnerability of Distributed Learning in Byzantium", ICML 2018,
    arXiv:1802.07927.

    Krum scores (see :func:`krum`) are computed once; the ``num_selected`` lowest-scoring
    updates (ties: lowest index) are averaged with their weights (uniformly if all selected
    weights are zero). ``num_selected = 1`` is Krum; the default is ``n - f``.
    Requires ``n > 2f + 2`` and ``1 <= num_selected <= n``.

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.
        num_byzantine: ``f``, the number of Byzantine clients to tolerate.
        num_selected: ``m``, how many updates to average (default ``n - f``).

    Returns:
        The ``(d,)`` aggregate, in ``updates.dtype``.
    """
    x, w = check_inputs(updates, weights)
    n = x.shape[0]
    f = check_num_byzantine(
        num_byzantine, n, "multi_krum", lambda f: 2 * f + 3, "n > 2*num_byzantine + 2"
    )
    m = n - f if num_selected is None else check_int(num_selected, "num_selected")
    if not 1 <= m <= n:
        raise ValueError(f"num_selected must be in [1, {n}] (n clients); got {num_selected!r}")
    scores = krum_scores(pairwise_sq_distances(x), n - f - 2)
    selected = stable_argsort(scores)[:m]
    return weighted_average(x, w[selected], rows=selected)
