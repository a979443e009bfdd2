"""Byzantine-robust aggregation rules on stacked, flattened client updates.

Every rule has the signature ``rule(updates, weights=None, **params) -> Tensor`` where

* ``updates`` is an ``(n_clients, d)`` floating tensor (one flattened update per row),
* ``weights`` is ``None`` (uniform) or an ``(n_clients,)`` tensor of non-negative weights with a
  positive sum (e.g. local example counts),
* rule-specific parameters are keyword-only,

and the result is a ``(d,)`` tensor with the dtype and device of ``updates``.

Conventions shared by all rules:

* **Byzantine budgets count clients.** Selection, trimming and neighbour counting treat every
  client as one vote, because ``num_byzantine`` bounds the number of adversarial *clients*
  (weights are self-reported and cannot be trusted to bound the adversary's influence).
  Weights enter the *averaging* of whatever survives the robust selection. If all surviving
  clients have weight zero, the survivors are averaged uniformly instead (documented per rule).
* **Numerics.** Distances and reductions are computed in float64; the result is cast back to
  ``updates.dtype``.
* **Determinism.** No rule uses a random number generator; ties are broken by client index.
* **Validation.** Invalid inputs raise ``ValueError`` whose message names the offending
  argument, the value received and the allowed range.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

__all__ = [
    "bulyan",
    "centered_clipping",
    "coordinate_median",
    "fltrust",
    "geometric_median",
    "krum",
    "multi_krum",
    "norm_clipping",
    "trimmed_mean",
    "weighted_mean",
]


# --------------------------------------------------------------------------------------------
# Validation helpers (shared with preaggregators.py and attacks.py)
# --------------------------------------------------------------------------------------------


def _check_updates(updates: torch.Tensor, name: str = "updates") -> torch.Tensor:
    """Validate a stacked ``(n, d)`` floating, finite, non-empty tensor and return it."""
    if not isinstance(updates, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of shape (n_clients, d); got {type(updates).__name__}"
        )
    if updates.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (n_clients, d); got a {updates.dim()}-D tensor of "
            f"shape {tuple(updates.shape)}"
        )
    if not updates.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype; got {updates.dtype}")
    n, d = updates.shape
    if n < 1 or d < 1:
        raise ValueError(
            f"{name} must hold at least one client and one coordinate; got shape {(n, d)}"
        )
    if not bool(torch.isfinite(updates).all()):
        bad = int((~torch.isfinite(updates)).sum())
        raise ValueError(f"{name} must be finite; got {bad} NaN/inf entries")
    return updates


def _check_weights(weights: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """Validate weights of shape ``(n,)`` and return them as a float64 tensor on ``device``.

    ``None`` means uniform weights.
    """
    if weights is None:
        return torch.ones(n, dtype=torch.float64, device=device)
    if not isinstance(weights, torch.Tensor):
        try:
            weights = torch.as_tensor(weights)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"weights must be None or a tensor of shape ({n},); got {type(weights).__name__}"
            ) from exc
    if weights.dtype == torch.bool or weights.is_complex():
        raise ValueError(f"weights must be real-valued; got dtype {weights.dtype}")
    if tuple(weights.shape) != (n,):
        raise ValueError(
            f"weights must have shape ({n},) to match updates; got shape {tuple(weights.shape)}"
        )
    w = weights.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"weights must be finite; got {weights.tolist()}")
    if bool((w < 0).any()):
        raise ValueError(f"weights must be non-negative (>= 0); got {weights.tolist()}")
    if float(w.sum()) <= 0.0:
        raise ValueError(f"weights must have a positive sum (> 0); got {weights.tolist()}")
    return w


def _check_int(value: object, name: str) -> int:
    """Return ``value`` as a Python int, rejecting bools, floats and other non-integers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    return int(value)


def _check_num_byzantine(
    num_byzantine: object, n: int, rule: str, min_clients: Callable[[int], int], requirement: str
) -> int:
    """Validate ``num_byzantine`` for ``rule`` with ``n`` clients.

    ``min_clients(f)`` is the smallest number of clients the rule needs to tolerate ``f``
    Byzantine clients; ``requirement`` spells that condition out for the error message.
    """
    f = _check_int(num_byzantine, "num_byzantine")
    max_f = -1
    while max_f + 1 <= n and min_clients(max_f + 1) <= n:
        max_f += 1
    if f < 0 or f > max_f:
        if max_f < 0:
            allowed = f"no value is allowed with n={n} clients (at least {min_clients(0)} needed)"
        else:
            allowed = f"allowed range with n={n} clients: 0 <= num_byzantine <= {max_f}"
        fix = (
            f"lower num_byzantine or use at least {min_clients(max(f, 0))} clients"
            if f >= 0
            else "num_byzantine must be >= 0"
        )
        raise ValueError(
            f"num_byzantine={f} is invalid for {rule}, which requires {requirement}; "
            f"{allowed}. Fix: {fix}."
        )
    return f


def _check_positive(value: object, name: str, allow_inf: bool = False) -> float:
    """Validate a strictly positive real number (optionally allowing +inf)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive real number; got {value!r}")
    v = float(value)
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        rng = "(0, inf]" if allow_inf else "(0, inf)"
        raise ValueError(f"{name} must be in {rng}; got {value!r}")
    return v


def _check_vector(vector: object, d: int, name: str, device: torch.device) -> torch.Tensor:
    """Validate a finite real ``(d,)`` tensor and return it as float64 on ``device``."""
    if not isinstance(vector, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape ({d},); got {type(vector)}")
    if tuple(vector.shape) != (d,):
        raise ValueError(
            f"{name} must have shape ({d},) to match updates; got shape {tuple(vector.shape)}"
        )
    if vector.dtype == torch.bool or vector.is_complex():
        raise ValueError(f"{name} must be real-valued; got dtype {vector.dtype}")
    v = vector.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} must be finite; got NaN/inf entries")
    return v


# --------------------------------------------------------------------------------------------
# Numerical helpers
# --------------------------------------------------------------------------------------------


def _weighted_average(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Float64 weighted average of the rows of ``x``; uniform if ``w`` sums to zero."""
    x64 = x.to(torch.float64)
    total = float(w.sum())
    if total <= 0.0:
        return x64.mean(dim=0)
    return (w / total) @ x64


def _coordinatewise_average(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-coordinate weighted average of ``values`` (m x d) with weights ``w`` (m x d).

    Coordinates whose weights sum to zero fall back to the uniform average.
    """
    v64 = values.to(torch.float64)
    total = w.sum(dim=0)
    weighted = (w * v64).sum(dim=0) / total.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(total > 0, weighted, v64.mean(dim=0))


def _pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """Exact float64 ``(n, n)`` matrix of squared Euclidean distances between rows of ``x``."""
    x64 = x.to(torch.float64)
    dist = torch.cdist(x64, x64, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")
    return dist.square()


def _krum_scores(sq_dist: torch.Tensor, num_neighbours: int) -> torch.Tensor:
    """Krum score of each row: sum of squared distances to its ``num_neighbours`` closest others."""
    n = sq_dist.shape[0]
    if num_neighbours <= 0 or n <= 1:
        return torch.zeros(n, dtype=sq_dist.dtype, device=sq_dist.device)
    masked = sq_dist.clone()
    masked.fill_diagonal_(math.inf)
    closest = torch.sort(masked, dim=1).values[:, :num_neighbours]
    return closest.sum(dim=1)


def _stable_argsort(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Ascending argsort that breaks ties by index (deterministic)."""
    return torch.sort(values, dim=dim, stable=True).indices


# --------------------------------------------------------------------------------------------
# Aggregation rules
# --------------------------------------------------------------------------------------------


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
    x = _check_updates(updates)
    w = _check_weights(weights, x.shape[0], x.device)
    return _weighted_average(x, w).to(x.dtype)


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
    x = _check_updates(updates)
    n = x.shape[0]
    w = _check_weights(weights, n, x.device)
    if bool((w == w[0]).all()):  # uniform weights: ordinary median, no cumulative sums needed
        values = torch.sort(x, dim=0).values
        lo, hi = values[(n - 1) // 2].to(torch.float64), values[n // 2].to(torch.float64)
        return (0.5 * (lo + hi)).to(x.dtype)
    values, order = torch.sort(x, dim=0, stable=True)
    cum = torch.cumsum(w[order], dim=0)  # (n, d) cumulative weight in sorted order
    total = float(w.sum())
    half, tol = 0.5 * total, 1e-9 * total
    # lower: first index with cum >= half; upper: first index with cum > half (strictly).
    lower = (cum < half - tol).sum(dim=0).clamp_max(n - 1)
    upper = (cum <= half + tol).sum(dim=0).clamp_max(n - 1)
    lo = values.gather(0, lower.unsqueeze(0)).squeeze(0).to(torch.float64)
    hi = values.gather(0, upper.unsqueeze(0)).squeeze(0).to(torch.float64)
    return (0.5 * (lo + hi)).to(x.dtype)


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
    x = _check_updates(updates)
    n = x.shape[0]
    w = _check_weights(weights, n, x.device)
    if (num_byzantine is None) == (beta is None):
        raise ValueError(
            "trimmed_mean needs exactly one of num_byzantine or beta; got "
            f"num_byzantine={num_byzantine!r}, beta={beta!r}"
        )
    if num_byzantine is not None:
        k = _check_num_byzantine(
            num_byzantine, n, "trimmed_mean", lambda f: 2 * f + 1, "n > 2*num_byzantine"
        )
    else:
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
            raise ValueError(f"beta must be a real number in [0, 0.5); got {beta!r}")
        if not 0.0 <= float(beta) < 0.5:
            raise ValueError(f"beta must be in [0, 0.5); got {beta!r}")
        k = math.floor(float(beta) * n)
    values, order = torch.sort(x, dim=0, stable=True)
    kept = slice(k, n - k)
    return _coordinatewise_average(values[kept], w[order[kept]]).to(x.dtype)


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
    x = _check_updates(updates)
    n = x.shape[0]
    _check_weights(weights, n, x.device)
    f = _check_num_byzantine(
        num_byzantine, n, "krum", lambda f: 2 * f + 3, "n > 2*num_byzantine + 2"
    )
    scores = _krum_scores(_pairwise_sq_distances(x), n - f - 2)
    return x[int(torch.argmin(scores))].clone()


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
    x = _check_updates(updates)
    n = x.shape[0]
    w = _check_weights(weights, n, x.device)
    f = _check_num_byzantine(
        num_byzantine, n, "multi_krum", lambda f: 2 * f + 3, "n > 2*num_byzantine + 2"
    )
    m = n - f if num_selected is None else _check_int(num_selected, "num_selected")
    if not 1 <= m <= n:
        raise ValueError(f"num_selected must be in [1, {n}] (n clients); got {num_selected!r}")
    scores = _krum_scores(_pairwise_sq_distances(x), n - f - 2)
    selected = _stable_argsort(scores)[:m]
    return _weighted_average(x[selected], w[selected]).to(x.dtype)


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
    x = _check_updates(updates)
    n = x.shape[0]
    w = _check_weights(weights, n, x.device)
    f = _check_num_byzantine(
        num_byzantine, n, "bulyan", lambda f: 4 * f + 3, "n >= 4*num_byzantine + 3"
    )
    theta, beta = n - 2 * f, n - 4 * f
    sq_dist = _pairwise_sq_distances(x)
    remaining = torch.arange(n, device=x.device)
    chosen: list[int] = []
    for _ in range(theta):  # loop over clients: inherent to the recursive selection
        r = remaining.numel()
        sub = sq_dist[remaining][:, remaining]
        scores = _krum_scores(sub, max(1, min(r - f - 2, r - 1)))
        pick = int(torch.argmin(scores))
        chosen.append(int(remaining[pick]))
        remaining = torch.cat([remaining[:pick], remaining[pick + 1 :]])
    sel = torch.tensor(chosen, device=x.device)
    selected = x[sel].to(torch.float64)  # (theta, d)
    ordered = torch.sort(selected, dim=0).values
    median = 0.5 * (ordered[(theta - 1) // 2] + ordered[theta // 2])
    closest = _stable_argsort((selected - median).abs(), dim=0)[:beta]  # (beta, d)
    values = selected.gather(0, closest)
    return _coordinatewise_average(values, w[sel][closest]).to(x.dtype)


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
    ``max_iter`` steps or once the objective changes by at most ``ftol`` times its value.

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.
        max_iter: maximum number of Weiszfeld iterations (>= 1).
        eps: smoothing constant (> 0).
        ftol: relative tolerance on the objective (>= 0).

    Returns:
        The ``(d,)`` geometric median, in ``updates.dtype``.
    """
    x = _check_updates(updates)
    w = _check_weights(weights, x.shape[0], x.device)
    max_iter = _check_int(max_iter, "max_iter")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1; got {max_iter}")
    eps = _check_positive(eps, "eps")
    if isinstance(ftol, bool) or not isinstance(ftol, numbers.Real) or not 0 <= ftol < math.inf:
        raise ValueError(f"ftol must be a real number in [0, inf); got {ftol!r}")
    x64 = x.to(torch.float64)
    w = w / w.sum()
    z = w @ x64
    dist = torch.linalg.vector_norm(x64 - z, dim=1)
    objective = float(w @ dist)
    for _ in range(max_iter):  # Weiszfeld iterations (inherently sequential)
        beta = w / dist.clamp_min(eps)
        z = (beta @ x64) / beta.sum()
        dist = torch.linalg.vector_norm(x64 - z, dim=1)
        new_objective = float(w @ dist)
        converged = abs(objective - new_objective) <= ftol * new_objective
        objective = new_objective
        if converged:
            break
    return z.to(x.dtype)


def centered_clipping(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    center: torch.Tensor | None = None,
    tau: float = 10.0,
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

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.
        center: ``(d,)`` starting point, typically the previous aggregate; ``None`` = zeros.
        tau: clipping radius in ``(0, inf]`` (default 10, as in the authors' code).
        n_iter: number of clipping iterations (>= 1).

    Returns:
        The ``(d,)`` aggregate, in ``updates.dtype``.
    """
    x = _check_updates(updates)
    n, d = x.shape
    w = _check_weights(weights, n, x.device)
    tau = _check_positive(tau, "tau", allow_inf=True)
    n_iter = _check_int(n_iter, "n_iter")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1; got {n_iter}")
    if center is None:
        v = torch.zeros(d, dtype=torch.float64, device=x.device)
    else:
        v = _check_vector(center, d, "center", x.device)
    x64 = x.to(torch.float64)
    w = w / w.sum()
    for _ in range(n_iter):
        diff = x64 - v
        norms = torch.linalg.vector_norm(diff, dim=1)
        scale = (tau / norms).clamp_max(1.0)  # norm 0 -> inf -> 1 (diff is 0 anyway)
        v = v + (w * scale) @ diff
    return v.to(x.dtype)


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
    x = _check_updates(updates)
    w = _check_weights(weights, x.shape[0], x.device)
    max_norm = _check_positive(max_norm, "max_norm", allow_inf=True)
    x64 = x.to(torch.float64)
    scale = (max_norm / torch.linalg.vector_norm(x64, dim=1)).clamp_max(1.0)
    return (((w / w.sum()) * scale) @ x64).to(x.dtype)


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

    Note the signature differs from the other rules (it needs ``server_update``), so FLTrust is
    not part of ``AGGREGATORS``; call it directly or pass ``server_update=`` by keyword.

    Args:
        updates: ``(n, d)`` stacked client updates.
        server_update: ``(d,)`` update computed by the server on its root dataset.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.

    Returns:
        The ``(d,)`` aggregate, in ``updates.dtype``.
    """
    x = _check_updates(updates)
    n, d = x.shape
    w = _check_weights(weights, n, x.device)
    g0 = _check_vector(server_update, d, "server_update", x.device)
    x64 = x.to(torch.float64)
    g0_norm = torch.linalg.vector_norm(g0)
    norms = torch.linalg.vector_norm(x64, dim=1)
    tiny = torch.finfo(torch.float64).tiny
    cos = (x64 @ g0) / (norms * g0_norm).clamp_min(tiny)
    scores = torch.where((norms > 0) & (g0_norm > 0), cos.clamp_min(0.0), 0.0) * w
    total = float(scores.sum())
    if total <= 0.0:
        return torch.zeros(d, dtype=x.dtype, device=x.device)
    coeff = scores * g0_norm / norms.clamp_min(tiny) / total
    return (coeff @ x64).to(x.dtype)
