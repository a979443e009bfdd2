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
* **Numerics.** Reductions (means, sums, norms) accumulate in float64; the result is cast back
  to ``updates.dtype``. Work proceeds in column blocks, so temporaries are ``O(n × block)``
  rather than ``O(n × d)``. Pairwise distances (Krum, Multi-Krum, Bulyan, NNM, geometric
  median) come from a Gram matrix accumulated in float64 from column-block products, which
  run in float64 up to ``_FLOAT64_GRAM_MAX_ENTRIES`` entries (exact for integer-valued
  updates) and in float32 beyond (for float32 updates); if the updates share an offset large
  against their distances, the Gram matrix is recomputed around the medoid update. On the
  float32 path squared distances carry a relative error of order 1e-6, so a Krum-type
  selection between candidates whose scores differ by less than that may differ from exact
  arithmetic (identical updates get identical distances, so their ties are still broken by
  client index). Order
  statistics of unweighted rules are exact: on CPU float tensors NumPy sorts each
  coordinate's ``n`` values in transposed column blocks; other dtypes and devices use a
  comparator network vectorised over coordinates (the same values either way).
* **Determinism.** No rule uses a random number generator; ties are broken by client index.
* **Validation.** Invalid inputs raise ``ValueError`` whose message names the offending
  argument, the value received and the allowed range.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
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
    # One summation pass: NaN and inf propagate through a sum, so a finite total proves every
    # entry finite. A non-finite total can also be overflow, so confirm entry by entry.
    if not bool(torch.isfinite(updates.sum())):
        bad = int((~torch.isfinite(updates)).sum())
        if bad:
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

#: Elements of one ``(rows × width)`` column block for streaming passes (float64 ≈ 4 MiB).
_STREAM_BLOCK = 1 << 19
#: Elements of one column block for comparator networks (float32 ≈ 8 MiB: the per-row
#: operations stay long enough to amortise their dispatch cost, and the block stays in cache).
_NETWORK_BLOCK = 1 << 21
#: Minimum block width of comparator networks (per-operation overhead dominates below it).
_NETWORK_MIN_WIDTH = 16384
#: Block width of the order-statistic networks run by the worker threads: rows below torch's
#: intra-op grain size (32768) run on one thread each, so blocks proceed independently.
_NETWORK_WIDTH = 16384


def _block_width(rows: int, d: int, elements: int, minimum: int = 256) -> int:
    """Width of the column blocks that keep ``rows × width`` near ``elements``."""
    return max(1, min(d, max(minimum, elements // max(rows, 1))))


def _column_blocks(d: int, width: int) -> Iterator[slice]:
    """Consecutive column slices of ``width`` (the last one may be narrower)."""
    for start in range(0, d, width):
        yield slice(start, min(start + width, d))


def _weighted_rows_average(
    x: torch.Tensor, coef: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum_i coef_i * x[rows[i]]`` accumulated in float64, returned in ``x.dtype``.

    ``coef`` is a float64 ``(m,)`` vector (``m = n`` if ``rows`` is ``None``).
    """
    d = x.shape[1]
    coef = coef.to(device=x.device, dtype=torch.float64)
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    for cols in _column_blocks(d, _block_width(coef.numel(), d, _STREAM_BLOCK)):
        block = x[:, cols] if rows is None else x[:, cols].index_select(0, rows)
        out[cols] = coef @ block.to(torch.float64)
    return out


def _normalised(w: torch.Tensor) -> torch.Tensor:
    """``w / sum(w)``, or uniform coefficients if ``w`` sums to zero (float64)."""
    total = float(w.sum())
    if total <= 0.0:
        return torch.full_like(w, 1.0 / w.numel(), dtype=torch.float64)
    return w.to(torch.float64) / total


def _weighted_average(
    x: torch.Tensor, w: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Float64 weighted average of the rows of ``x`` (or of ``x[rows]`` with weights ``w``);
    uniform if ``w`` sums to zero. Returned in ``x.dtype``."""
    return _weighted_rows_average(x, _normalised(w), rows)


def _coordinatewise_average(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-coordinate weighted average of ``values`` (m x d) with weights ``w`` (m x d).

    Coordinates whose weights sum to zero fall back to the uniform average.
    """
    v64 = values.to(torch.float64)
    total = w.sum(dim=0)
    weighted = (w * v64).sum(dim=0) / total.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(total > 0, weighted, v64.mean(dim=0))


def _is_uniform(w: torch.Tensor) -> bool:
    return bool((w == w[0]).all())


@functools.lru_cache(maxsize=256)
def _selection_network(n: int, positions: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Comparators ``(a, b)``, ``a < b``, that sort ``n`` values enough to fix ``positions``.

    Batcher's odd-even merge sort on the next power of two (comparators touching padding
    positions ``>= n`` are no-ops for +inf padding and are dropped), pruned backwards to the
    comparators that can influence the requested output positions. Applying ``(a, b)`` means
    ``x[a], x[b] = min(x[a], x[b]), max(x[a], x[b])``, in the returned order.
    """
    size = 1
    while size < n:
        size *= 2
    layers: list[list[tuple[int, int]]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            layer = []
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        layer.append((a, b))
            layers.append(layer)
            k //= 2
        p *= 2
    live = set(positions)
    kept: list[list[tuple[int, int]]] = []
    for layer in reversed(layers):  # the comparators of one layer touch disjoint positions
        needed = [(a, b) for a, b in layer if a in live or b in live]
        for a, b in needed:
            live.update((a, b))
        kept.append(needed)
    return tuple(pair for layer in reversed(kept) for pair in layer)


def _sorted_rows(
    block: torch.Tensor, positions: tuple[int, ...], spare: torch.Tensor
) -> list[torch.Tensor]:
    """Rows ``positions`` of ``block`` (m × c) sorted per column, by a comparator network.

    Each comparator is two vectorised row operations (min into a spare row, max in place) and a
    swap of row references, so no data is copied. ``block`` and ``spare`` (a ``(c,)`` buffer of
    the same dtype) are overwritten; the returned rows are views into them.
    """
    rows = list(block.unbind(0))
    tmp = spare
    for a, b in _selection_network(block.shape[0], positions):
        ra, rb = rows[a], rows[b]
        torch.minimum(ra, rb, out=tmp)
        torch.maximum(ra, rb, out=rb)
        rows[a], tmp = tmp, ra
    return [rows[i] for i in positions]


def _map_order_statistics(
    x: torch.Tensor,
    positions: tuple[int, ...],
    consume: Callable[[slice, Sequence[torch.Tensor]], None],
) -> None:
    """Call ``consume(cols, rows)`` for every column block of ``x`` with the block's rows at
    sorted ``positions`` (views valid during the call).

    Blocks are spread over ``torch.get_num_threads()`` worker threads. Every operation inside
    a block touches at most ``_NETWORK_WIDTH`` (< torch's 32768 grain size) elements, so it runs
    single-threaded without an OpenMP fork/join: the thousands of small network operations
    never wait for each other across cores (a barrier per operation is ruinous when the cores
    are shared with other processes), yet all cores work. ``consume`` must only write
    ``cols`` of its outputs.
    """
    n, d = x.shape
    if x.device.type == "cpu" and x.dtype in _NUMPY_SORTABLE:
        _map_sorted_blocks(x, positions, consume)
        return
    width = min(d, _NETWORK_WIDTH)
    blocks = list(_column_blocks(d, width))
    local = threading.local()

    def run(cols: slice) -> None:
        c = cols.stop - cols.start
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            buffer = local.buffer = torch.empty(n + 1, width, dtype=x.dtype, device=x.device)
        block = buffer[:n, :c]
        for i in range(n):  # row by row: each copy stays below the grain size
            block[i].copy_(x[i, cols])
        consume(cols, _sorted_rows(block, positions, buffer[n, :c]))

    _run_blocks(run, blocks, n * d)


#: Dtypes whose order statistics come from NumPy's (SIMD) sort rather than a network.
_NUMPY_SORTABLE = (torch.float16, torch.float32, torch.float64)
#: Columns per block of the sorted-block kernel: the transposed ``(width × n)`` block and its
#: sort stay in the core's L2 cache for the client counts of a federation.
_SORT_WIDTH = 4096
#: Below this many entries a kernel runs on the calling thread (a pool costs more than it
#: saves on small shapes).
_PARALLEL_MIN_ENTRIES = 1 << 21


def _map_sorted_blocks(
    x: torch.Tensor,
    positions: tuple[int, ...],
    consume: Callable[[slice, Sequence[torch.Tensor]], None],
) -> None:
    """:func:`_map_order_statistics` by sorting: each block of ``_SORT_WIDTH`` columns is
    transposed into a contiguous ``(width × n)`` buffer and every coordinate's ``n`` values
    are sorted in place by NumPy (a vectorised sort of short contiguous rows, far fewer
    operations than a comparator network for large ``n``). The requested ``positions`` (a
    contiguous range) are handed over as one contiguous ``(positions × c)`` tensor (the
    network hands a list of rows; ``consume`` accepts both). Exact: the same values as the
    network, in the same order."""
    n, d = x.shape
    lo, hi = positions[0], positions[-1]
    assert positions == tuple(range(lo, hi + 1)), "positions must be a contiguous range"
    values = x.detach().numpy()
    width = min(d, _SORT_WIDTH)
    local = threading.local()

    def run(cols: slice) -> None:
        c = cols.stop - cols.start
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            buffer = local.buffer = np.empty((width, n), dtype=values.dtype)
        block = buffer[:c]
        np.copyto(block, values[:, cols].T)
        block.sort(axis=1)
        picked = np.ascontiguousarray(block[:, lo : hi + 1].T)  # (positions, c)
        consume(cols, torch.from_numpy(picked))

    _run_blocks(run, list(_column_blocks(d, width)), n * d)


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def _run_blocks(run: Callable[[slice], None], blocks: list[slice], entries: int) -> None:
    """``run`` every block, on ``torch.get_num_threads()`` worker threads when > 1 and the
    input has at least ``_PARALLEL_MIN_ENTRIES`` entries."""
    global _POOL
    workers = min(torch.get_num_threads(), len(blocks))
    if workers <= 1 or entries < _PARALLEL_MIN_ENTRIES:
        for cols in blocks:
            run(cols)
        return
    with _POOL_LOCK:  # one pool per process (recreated after a fork) and thread count
        if _POOL is None or _POOL[:2] != (os.getpid(), workers):
            _POOL = (os.getpid(), workers, ThreadPoolExecutor(workers, "robust-agg"))
        pool = _POOL[2]
    list(pool.map(run, blocks))


def _gram(x: torch.Tensor, dtype: torch.dtype, center: torch.Tensor | None = None) -> torch.Tensor:
    """Float64 ``(n, n)`` Gram matrix of the rows of ``x`` (minus ``center``), block by block:
    block products in ``dtype``, accumulated in float64.

    On CPU each block is copied into a contiguous buffer and multiplied by its own transpose
    with NumPy, which hands ``B @ B.T`` to BLAS's symmetric rank-k update (half the
    multiply-adds of a general product)."""
    n, d = x.shape
    width = _block_width(n, d, _STREAM_BLOCK, 4096)
    if x.device.type == "cpu" and x.dtype in _NUMPY_SORTABLE and dtype in _BLAS_DTYPES:
        values = x.detach().numpy()
        np_dtype = _BLAS_DTYPES[dtype]
        shift = None if center is None else center.detach().cpu().numpy().astype(np_dtype)
        gram_np = np.zeros((n, n), dtype=np.float64)
        buffer = np.empty((n, min(width, d)), dtype=np_dtype)
        for cols in _column_blocks(d, width):
            c = cols.stop - cols.start
            block = buffer if c == buffer.shape[1] else np.empty((n, c), dtype=np_dtype)
            np.copyto(block, values[:, cols], casting="unsafe")
            if shift is not None:
                block -= shift[cols]
            gram_np += np.dot(block, block.T)
        return torch.from_numpy(gram_np)
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    part = torch.empty(n, n, dtype=dtype, device=x.device)
    for cols in _column_blocks(d, width):
        block = x[:, cols].to(dtype)
        if center is not None:
            block = block - center[cols]
        torch.mm(block, block.T, out=part)
        gram += part
    return gram


#: Block-product dtypes of :func:`_gram` that run through NumPy's BLAS.
_BLAS_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _sq_distances_from_gram(gram: torch.Tensor) -> torch.Tensor:
    diag = gram.diagonal()
    sq = diag.unsqueeze(1) + diag.unsqueeze(0) - 2.0 * gram
    sq = 0.5 * (sq + sq.T)  # exactly symmetric
    sq.clamp_min_(0.0)
    sq.fill_diagonal_(0.0)
    return sq


#: Up to this many entries (n × d), distance block products run in float64 (exact for
#: integer-valued updates, ~1e-16 relative error otherwise); beyond it in float32 (≈ 2× faster),
#: still accumulated in float64.
_FLOAT64_GRAM_MAX_ENTRIES = 1 << 22
#: Recompute the Gram matrix around a central row when the typical pair's squared norms exceed
#: its squared distance by more than this factor (rounding error grows with the norms).
_MAX_CANCELLATION = 16.0


def _pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """Float64 ``(n, n)`` matrix of squared Euclidean distances between rows of ``x``.

    ``||x_i||^2 + ||x_j||^2 - 2 x_i.x_j`` from the Gram matrix (:func:`_gram`). Its rounding
    error scales with the squared norms, so when the rows share an offset that is large against
    their distances (median over pairs of ``(||x_i||^2 + ||x_j||^2) / ||x_i - x_j||^2`` above
    ``_MAX_CANCELLATION``; e.g. full models rather than deltas) the Gram matrix is recomputed
    around the medoid row (distances are translation invariant; a medoid, unlike the mean, is
    not dragged away by outliers).
    """
    gram = _centred_gram(x)
    return _unify_duplicates(x, _sq_distances_from_gram(gram), gram.diagonal())


def _unify_duplicates(x: torch.Tensor, sq: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """Give identical rows of ``x`` identical rows and columns of ``sq`` (in place).

    Gram entries of identical updates can round differently (different GEMM tiles), which
    would break their Krum ties by rounding instead of by client index. Pairs whose distance
    is at rounding level are compared exactly; a duplicate copies its first twin's distances.
    """
    n = x.shape[0]
    scale = sq_norms.unsqueeze(1) + sq_norms.unsqueeze(0)
    candidates = torch.triu((sq <= 1e-5 * scale).to(torch.uint8), diagonal=1).nonzero().tolist()
    first = list(range(n))
    for i, j in candidates:
        if first[i] == i and first[j] == j and torch.equal(x[i], x[j]):
            first[j] = i
    for j, i in enumerate(first):
        if i != j:
            sq[j] = sq[i]
            sq[:, j] = sq[:, i]
    return sq


def _centred_gram(x: torch.Tensor) -> torch.Tensor:
    """Float64 Gram matrix of the rows of ``x`` minus a common centre (zero, or the medoid row
    if the rows share a large offset; see :func:`_pairwise_sq_distances`)."""
    n, d = x.shape
    wide = x.dtype == torch.float64 or n * d <= _FLOAT64_GRAM_MAX_ENTRIES
    dtype = torch.float64 if wide else torch.float32
    gram = _gram(x, dtype)
    if n > 1:
        sq = _sq_distances_from_gram(gram)
        i, j = torch.triu_indices(n, n, 1, device=x.device)
        diag = gram.diagonal()
        ratio = (diag[i] + diag[j]) / sq[i, j].clamp_min(torch.finfo(torch.float64).tiny)
        if float(ratio.median()) > _MAX_CANCELLATION:
            medoid = int(torch.argmin(sq.median(dim=1).values))
            gram = _gram(x, dtype, x[medoid].to(dtype))
    return gram


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
    return _weighted_average(x, w)


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
    n, d = x.shape
    w = _check_weights(weights, n, x.device)
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    if _is_uniform(w):  # ordinary median: the middle order statistic(s), by a network

        def middle_value(cols: slice, rows: list[torch.Tensor]) -> None:
            if len(rows) == 1:
                out[cols] = rows[0]
            else:
                out[cols] = 0.5 * (rows[0].to(torch.float64) + rows[1].to(torch.float64))

        _map_order_statistics(x, tuple(sorted({(n - 1) // 2, n // 2})), middle_value)
        return out
    total = float(w.sum())
    half, tol = 0.5 * total, 1e-9 * total
    for cols in _column_blocks(d, _block_width(n, d, _STREAM_BLOCK)):
        values, order = torch.sort(x[:, cols], dim=0, stable=True)
        cum = torch.cumsum(w[order], dim=0)  # (n, c) cumulative weight in sorted order
        # lower: first index with cum >= half; upper: first index with cum > half (strictly).
        lower = (cum < half - tol).sum(dim=0).clamp_max(n - 1)
        upper = (cum <= half + tol).sum(dim=0).clamp_max(n - 1)
        lo = values.gather(0, lower.unsqueeze(0)).squeeze(0).to(torch.float64)
        hi = values.gather(0, upper.unsqueeze(0)).squeeze(0).to(torch.float64)
        out[cols] = 0.5 * (lo + hi)
    return out


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
    if k == 0:
        return _weighted_average(x, w)
    d = x.shape[1]
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    if _is_uniform(w):  # plain mean of the middle order statistics, by a network

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

        _map_order_statistics(x, tuple(range(k, n - k)), middle_mean)
        return out
    kept = slice(k, n - k)
    for cols in _column_blocks(d, _block_width(n, d, _STREAM_BLOCK)):
        values, order = torch.sort(x[:, cols], dim=0, stable=True)
        out[cols] = _coordinatewise_average(values[kept], w[order[kept]])
    return out


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
    return _weighted_average(x, w[selected], rows=selected)


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
    uniform = _is_uniform(w_sel)
    w_col = w_sel.to(torch.float64).unsqueeze(1)
    middle = tuple(sorted({(theta - 1) // 2, theta // 2}))
    width = _block_width(theta, d, _NETWORK_BLOCK, _NETWORK_MIN_WIDTH)
    values_buf = torch.empty(theta + 1, width, dtype=x.dtype, device=x.device)
    dist_buf = torch.empty(theta, width, dtype=torch.float64, device=x.device)
    net_buf = torch.empty(theta + 1, width, dtype=torch.float64, device=x.device)
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    for cols in _column_blocks(d, width):
        c = cols.stop - cols.start
        selected = x[:, cols].index_select(0, sel)  # (theta, c), rows in selection order
        block = values_buf[:theta, :c]
        block.copy_(selected)
        rows = _sorted_rows(block, middle, values_buf[theta, :c])
        median = 0.5 * (rows[0].to(torch.float64) + rows[-1].to(torch.float64))
        dist = dist_buf[:, :c]
        torch.sub(selected, median, out=dist).abs_()
        scratch = net_buf[:theta, :c]
        scratch.copy_(dist)
        threshold = _sorted_rows(scratch, (beta - 1,), net_buf[theta, :c])[0]
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
    ``max_iter`` steps or once the objective changes by at most ``ftol`` times the weighted
    median of the distances ``||z - x_i||`` (or by no more than float64 rounding noise).

    Every iterate is a convex combination ``z = sum_i a_i x_i``, so the iterations run on the
    coefficients ``a`` with distances ``||x_i - z||^2 = (e_i - a)^T G (e_i - a)`` from the
    ``(n, n)`` Gram matrix ``G`` (computed once, as for Krum): two passes over the updates in
    total, however many iterations. ``z`` is then formed exactly and its distances measured
    exactly; if the objective from the Gram matrix and the exact one differ by more than the
    stopping tolerance (e.g. when ``z`` sits on a data point, where the Gram matrix's rounding
    error dominates a tiny distance), the iterations continue with exact distances (one pass
    over the updates each), up to another ``max_iter``.

    That scale, unlike the objective itself, cannot be inflated by a minority of far-away
    updates: with the objective as the scale (as in RFA's reference code) Byzantine updates of
    norm ``B`` stop the iteration while ``z`` is still ``~ ftol * B`` away from the
    minimiser, so the error grows with the attack's magnitude. Without outliers both scales
    are of the same order.

    Starting from the mean, the pull of far-away updates shrinks by roughly ``a / (1 - a)``
    per iteration (``a`` = their share of the weight), so the default ``max_iter`` suffices up
    to ``a ≈ 0.4``; closer to the breakdown point ``1/2`` raise ``max_iter``.

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.
        max_iter: maximum number of Weiszfeld iterations (>= 1).
        eps: smoothing constant (> 0).
        ftol: tolerance on the objective's change, relative to the weighted median distance
            (>= 0).

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
    w = w / w.sum()
    noise = 8 * x.shape[0] * torch.finfo(torch.float64).eps

    def close(old: float, new: float, dist: torch.Tensor) -> bool:
        return abs(old - new) <= ftol * _weighted_median(dist, w) + noise * max(old, new)

    def weiszfeld(
        dist: torch.Tensor, measure: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Iterate from distances ``dist``; ``measure(coef)`` moves z to ``coef @ x`` and
        returns its distances. Returns the last coefficients and distances."""
        coef, objective = w, float(w @ dist)
        for _ in range(max_iter):  # Weiszfeld iterations (inherently sequential)
            beta = w / dist.clamp_min(eps)
            coef = beta / beta.sum()
            dist = measure(coef)
            new_objective = float(w @ dist)
            converged = close(objective, new_objective, dist)
            objective = new_objective
            if converged:
                break
        return coef, dist

    gram = _centred_gram(x)
    coef, modelled = weiszfeld(_gram_distances(gram, w), lambda c: _gram_distances(gram, c))
    z = torch.empty(x.shape[1], dtype=torch.float64, device=x.device)
    exact = _combine_and_distances(x, coef, z)
    if not close(float(w @ modelled), float(w @ exact), exact):
        weiszfeld(exact, lambda c: _combine_and_distances(x, c, z))
    return z.to(x.dtype)


def _gram_distances(gram: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``||x_i - z||`` for ``z = sum_j coef_j x_j`` (``sum coef = 1``) from the Gram matrix of
    the (equally shifted) rows: ``G_ii - 2 (G coef)_i + coef^T G coef``."""
    g_coef = gram @ coef
    sq = gram.diagonal() - 2.0 * g_coef + coef @ g_coef
    return sq.clamp_min_(0.0).sqrt_()


def _weighted_median(values: torch.Tensor, w: torch.Tensor) -> float:
    """Lower weighted median of ``values`` for weights ``w`` summing to one."""
    order = torch.argsort(values)
    below = int((torch.cumsum(w[order], dim=0) < 0.5).sum())
    return float(values[order[min(below, values.numel() - 1)]])


def _combine_and_distances(x: torch.Tensor, coef: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """One pass over ``x``: write ``z = coef @ x`` (float64, in place) and return the exact
    float64 distances ``||x_i - z||``; each column block is combined and measured while it is
    in cache."""
    n, d = x.shape
    sq = torch.zeros(n, dtype=torch.float64, device=x.device)
    for cols in _column_blocks(d, _block_width(n, d, _STREAM_BLOCK)):
        block = x[:, cols].to(torch.float64, copy=True)
        zb = coef @ block
        z[cols] = zb
        sq += block.sub_(zb).square_().sum(dim=1)
    return sq.sqrt_()


def centered_clipping(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    center: torch.Tensor | None = None,
    tau: float | None = 10.0,
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

    ``tau = None`` picks the radius from the round itself: the median of the distances
    ``||x_i - center||`` (unweighted). A fixed τ has to match the scale of honest updates,
    which depends on the model, the learning rate and the local epochs (the authors' τ = 10
    is for single stochastic gradients); with fewer than n/2 Byzantine updates the median
    distance is at most the largest honest distance, so Byzantine updates cannot inflate the
    radius beyond the honest scale, and at least half of the updates are clipped to it.

    Args:
        updates: ``(n, d)`` stacked client updates.
        weights: ``(n,)`` non-negative weights with positive sum; ``None`` for uniform.
        center: ``(d,)`` starting point, typically the previous aggregate; ``None`` = zeros.
        tau: clipping radius in ``(0, inf]`` (default 10, as in the authors' code), or
            ``None`` for the median distance of the updates from ``center``.
        n_iter: number of clipping iterations (>= 1).

    Returns:
        The ``(d,)`` aggregate, in ``updates.dtype``.
    """
    x = _check_updates(updates)
    n, d = x.shape
    w = _check_weights(weights, n, x.device)
    if tau is not None:
        tau = _check_positive(tau, "tau", allow_inf=True)
    n_iter = _check_int(n_iter, "n_iter")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1; got {n_iter}")
    if center is None:
        v = torch.zeros(d, dtype=torch.float64, device=x.device)
    else:
        # a copy: v is updated in place and must not alias the caller's tensor
        v = _check_vector(center, d, "center", x.device).clone()
    w = w / w.sum()
    norms = _row_distances(x, v)
    if tau is None:
        tau = float(norms.quantile(0.5))  # even n: the mean of the two middle distances
        if tau == 0.0:  # every update equals the centre
            return v.to(x.dtype)
    for i in range(n_iter):
        scale = (tau / norms).clamp_max(1.0)  # norm 0 -> inf -> 1 (diff is 0 anyway)
        # v <- v + sum_i c_i (x_i - v), fused with the distances to the new v when needed.
        norms = _shift_and_distances(x, w * scale, v, measure=i + 1 < n_iter)
    return v.to(x.dtype)


def _row_distances(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Float64 ``||x_i - v||`` for every row, one column block at a time."""
    n, d = x.shape
    sq = torch.zeros(n, dtype=torch.float64, device=x.device)
    for cols in _column_blocks(d, _block_width(n, d, _STREAM_BLOCK)):
        block = x[:, cols].to(torch.float64, copy=True)
        sq += block.sub_(v[cols]).square_().sum(dim=1)
    return sq.sqrt_()


def _shift_and_distances(
    x: torch.Tensor, coef: torch.Tensor, v: torch.Tensor, measure: bool
) -> torch.Tensor:
    """In one pass: ``v += coef @ (x - v)`` in place (float64) and, if ``measure``, the
    distances ``||x_i - v_new||`` (else zeros)."""
    n, d = x.shape
    sq = torch.zeros(n, dtype=torch.float64, device=x.device)
    for cols in _column_blocks(d, _block_width(n, d, _STREAM_BLOCK)):
        block = x[:, cols].to(torch.float64, copy=True)
        vb = v[cols]
        block.sub_(vb)
        delta = coef @ block
        vb += delta
        if measure:
            sq += block.sub_(delta).square_().sum(dim=1)
    return sq.sqrt_()


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
    scale = (max_norm / _row_norms_and_dots(x)[0]).clamp_max(1.0)
    return _weighted_rows_average(x, (w / w.sum()) * scale)


def _row_norms_and_dots(
    x: torch.Tensor, other: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float64 row norms ``||x_i||`` and, if ``other`` (float64 ``(d,)``) is given, the dot
    products ``x_i . other``, in one pass over column blocks."""
    n, d = x.shape
    sq = torch.zeros(n, dtype=torch.float64, device=x.device)
    dots = None if other is None else torch.zeros(n, dtype=torch.float64, device=x.device)
    for cols in _column_blocks(d, _block_width(n, d, _STREAM_BLOCK)):
        block = x[:, cols].to(torch.float64)
        if dots is not None and other is not None:
            dots += block @ other[cols]
        sq += (block * block).sum(dim=1)
    return sq.sqrt_(), dots


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
    g0_norm = torch.linalg.vector_norm(g0)
    norms, dots = _row_norms_and_dots(x, g0)
    assert dots is not None
    tiny = torch.finfo(torch.float64).tiny
    cos = dots / (norms * g0_norm).clamp_min(tiny)
    scores = torch.where((norms > 0) & (g0_norm > 0), cos.clamp_min(0.0), 0.0) * w
    total = float(scores.sum())
    if total <= 0.0:
        return torch.zeros(d, dtype=x.dtype, device=x.device)
    coeff = scores * g0_norm / norms.clamp_min(tiny) / total
    return _weighted_rows_average(x, coeff)
