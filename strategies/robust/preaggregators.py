"""Pre-aggregators: robustness-boosting transforms applied before an aggregation rule.

A pre-aggregator maps ``(updates, weights) -> (updates', weights')`` where ``updates`` is an
``(n, d)`` floating tensor, ``weights`` is ``None`` (uniform) or ``(n,)`` non-negative with a
positive sum, ``updates'`` is ``(m, d)`` in ``updates.dtype`` and ``weights'`` is an ``(m,)``
tensor in ``updates.dtype`` (always a tensor, never ``None``).

:func:`compose` chains pre-aggregators with an aggregation rule and forwards keyword
parameters by name to every stage that accepts them, e.g.::

    rule = compose([nearest_neighbor_mixing], krum)
    rule(updates, weights, num_byzantine=2)  # num_byzantine reaches both stages
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .checks import check_inputs, check_int, check_num_byzantine
from .kernels import (
    STREAM_BLOCK,
    block_width,
    column_blocks,
    pairwise_sq_distances,
    stable_argsort,
)

__all__ = ["bucketing", "compose", "nearest_neighbor_mixing"]


def nearest_neighbor_mixing(
    updates: torch.Tensor, weights: torch.Tensor | None = None, *, num_byzantine: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-neighbour mixing (NNM).

    Reference: Y. Allouah, S. Farhadkhani, R. Guerraoui, N. Gupta, R. Pinot, J. Stephan,
    "Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023,
    arXiv:2302.01772.

    Every update ``x_i`` is replaced by the uniform average of its ``n - f`` nearest updates in
    Euclidean distance (itself included; ties broken by client index). Neighbour selection
    counts clients (the Byzantine budget is a number of clients), so the mixing is unweighted;
    the weights are passed through unchanged since row ``i`` still stands for client ``i``.
    Requires ``n > 2f``.

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.
        num_byzantine: ``f``, the number of Byzantine clients to tolerate.

    Returns:
        ``(mixed_updates (n, d), weights (n,))``.
    """
    x, w = check_inputs(updates, weights)
    n = x.shape[0]
    f = check_num_byzantine(
        num_byzantine, n, "nearest_neighbor_mixing", lambda f: 2 * f + 1, "n > 2*num_byzantine"
    )
    k = n - f
    sq_dist = pairwise_sq_distances(x)
    # Self-distance is exactly 0; ensure self sorts first among zero-distance ties.
    sq_dist.fill_diagonal_(-1.0)
    neighbours = stable_argsort(sq_dist, dim=1)[:, :k]  # (n, k)
    mixing = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    mixing.scatter_(1, neighbours, 1.0 / k)
    d = x.shape[1]
    mixed = torch.empty_like(x, memory_format=torch.contiguous_format)
    for cols in column_blocks(d, block_width(n, d, STREAM_BLOCK)):
        mixed[:, cols] = mixing @ x[:, cols].to(torch.float64)
    return mixed, w.to(x.dtype)


def bucketing(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    bucket_size: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucketing: average random groups of ``bucket_size`` updates.

    Reference: S. P. Karimireddy, L. He, M. Jaggi, "Byzantine-Robust Learning on Heterogeneous
    Datasets via Bucketing", ICLR 2022, arXiv:2006.09365.

    The clients are permuted with ``torch.randperm(n, generator=generator)`` and split into
    ``ceil(n / bucket_size)`` consecutive buckets (the last one may be smaller). Each bucket
    becomes one row: the weighted average of its members (uniform if their weights are all
    zero), with the sum of their weights as the bucket weight. Hence the weighted mean of the
    output equals the weighted mean of the input exactly.

    **Randomness:** only the explicit ``generator`` is used; with ``generator=None`` no
    shuffling happens (buckets follow client order). Pass a seeded ``torch.Generator`` (and
    advance it every round) to get the paper's random bucketing reproducibly.

    Note that a downstream rule sees ``ceil(n / s)`` inputs of which up to ``f`` may be
    contaminated; size its own ``num_byzantine`` accordingly (the paper uses ``s <= n / (2f)``).

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.
        bucket_size: ``s`` in ``[1, n]``; ``1`` only permutes.
        generator: seeded CPU/device generator used for the permutation, or ``None``.

    Returns:
        ``(bucket_means (ceil(n/s), d), bucket_weights (ceil(n/s),))``.
    """
    x, w = check_inputs(updates, weights)
    n = x.shape[0]
    s = check_int(bucket_size, "bucket_size")
    if not 1 <= s <= n:
        raise ValueError(f"bucket_size must be in [1, {n}] (n clients); got {bucket_size!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator or None; got {type(generator).__name__}"
        )
    if generator is None:
        perm = torch.arange(n, device=x.device)
    else:
        perm = torch.randperm(n, generator=generator, device=generator.device).to(x.device)
    m = math.ceil(n / s)
    bucket_of = torch.empty(n, dtype=torch.long, device=x.device)
    bucket_of[perm] = torch.arange(n, device=x.device) // s  # client perm[j] -> bucket j // s
    x64 = x.to(torch.float64)

    def per_bucket(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((m, *values.shape[1:]), dtype=torch.float64, device=x.device)
        return out.index_add_(0, bucket_of, values)

    bucket_weight = per_bucket(w)
    weighted_sum = per_bucket(w.unsqueeze(1) * x64)
    plain_sum = per_bucket(x64)
    counts = torch.bincount(bucket_of, minlength=m).to(torch.float64)
    tiny = torch.finfo(torch.float64).tiny
    means = torch.where(
        (bucket_weight > 0).unsqueeze(1),
        weighted_sum / bucket_weight.clamp_min(tiny).unsqueeze(1),
        plain_sum / counts.unsqueeze(1),
    )
    return means.to(x.dtype), bucket_weight.to(x.dtype)


def _accepted_params(fn: Callable[..., Any]) -> set[str] | None:
    """Names of keyword parameters ``fn`` accepts besides updates/weights (None = any)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: forward everything
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in params if p.kind in kinds} - {"updates", "weights"}


def compose(
    pre_aggregators: Sequence[Callable[..., tuple[torch.Tensor, torch.Tensor]]],
    aggregator: Callable[..., torch.Tensor],
) -> Callable[..., torch.Tensor]:
    """Chain pre-aggregators and an aggregation rule into one aggregation rule.

    ``compose([p1, p2], agg)(updates, weights, **params)`` computes
    ``agg(*p2(*p1(updates, weights)))``, passing every keyword in ``params`` to each stage
    whose signature has a parameter of that name (or ``**kwargs``). Stages are called as
    ``stage(updates, weights=weights, **their_params)``. A parameter that no stage accepts
    raises ``TypeError`` (catches typos such as ``num_byzantines``).

    Args:
        pre_aggregators: pre-aggregators applied in order (may be empty).
        aggregator: the final aggregation rule.

    Returns:
        A rule ``(updates, weights=None, **params) -> (d,) tensor`` named e.g. ``"nnm+krum"``
        after the stages' ``__name__``.
    """
    stages = [*pre_aggregators, aggregator]
    for i, stage in enumerate(stages):
        if not callable(stage):
            raise ValueError(f"compose stage {i} must be callable; got {stage!r}")
    accepted = [_accepted_params(stage) for stage in stages]

    def _kwargs(i: int, params: dict[str, Any]) -> dict[str, Any]:
        names = accepted[i]
        return dict(params) if names is None else {k: v for k, v in params.items() if k in names}

    def composed(
        updates: torch.Tensor, weights: torch.Tensor | None = None, **params: Any
    ) -> torch.Tensor:
        if all(names is not None for names in accepted):
            known = set().union(*accepted)  # type: ignore[arg-type]
            unknown = sorted(set(params) - known)
            if unknown:
                raise TypeError(
                    f"{composed.__name__} got parameters no stage accepts: {unknown}; "
                    f"accepted: {sorted(known)}"
                )
        for i, pre in enumerate(pre_aggregators):
            updates, weights = pre(updates, weights=weights, **_kwargs(i, params))
        return aggregator(updates, weights=weights, **_kwargs(len(stages) - 1, params))

    composed.__name__ = "+".join(getattr(s, "__name__", type(s).__name__) for s in stages)
    composed.__qualname__ = composed.__name__
    composed.__doc__ = f"Composition {composed.__name__}: pre-aggregators then aggregator."
    return composed
