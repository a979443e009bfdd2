"""Numerical kernels of the robust aggregation rules and pre-aggregators.

Streaming passes over column blocks (temporaries ``O(n × block)`` rather than ``O(n × d)``),
float64-accumulated weighted averages, order statistics per coordinate (NumPy's sort of
transposed column blocks on CPU floats, a comparator network vectorised over coordinates
otherwise, spread over worker threads), pairwise squared distances from a BLAS Gram matrix,
Krum scores and a stable argsort. The rules in :mod:`strategies.robust.rules` document the
numerical guarantees these give them.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = [
    "FLOAT64_GRAM_MAX_ENTRIES",
    "NUMPY_SORTABLE",
    "SORT_WIDTH",
    "STREAM_BLOCK",
    "block_width",
    "centred_gram",
    "column_blocks",
    "coordinatewise_average",
    "is_uniform",
    "krum_scores",
    "map_order_statistics",
    "pairwise_sq_distances",
    "row_norms_and_dots",
    "sorted_rows",
    "stable_argsort",
    "weighted_average",
    "weighted_rows_average",
]

# --------------------------------------------------------------------------------------------
# Column blocks and weighted averages
# --------------------------------------------------------------------------------------------

#: Elements of one ``(rows × width)`` column block for streaming passes (float64 ≈ 4 MiB).
STREAM_BLOCK = 1 << 19


def block_width(rows: int, d: int, elements: int, minimum: int = 256) -> int:
    """Width of the column blocks that keep ``rows × width`` near ``elements``."""
    return max(1, min(d, max(minimum, elements // max(rows, 1))))


def column_blocks(d: int, width: int) -> Iterator[slice]:
    """Consecutive column slices of ``width`` (the last one may be narrower)."""
    for start in range(0, d, width):
        yield slice(start, min(start + width, d))


def weighted_rows_average(
    x: torch.Tensor, coef: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum_i coef_i * x[rows[i]]`` accumulated in float64, returned in ``x.dtype``.

    ``coef`` is a float64 ``(m,)`` vector (``m = n`` if ``rows`` is ``None``).
    """
    d = x.shape[1]
    coef = coef.to(device=x.device, dtype=torch.float64)
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    for cols in column_blocks(d, block_width(coef.numel(), d, STREAM_BLOCK)):
        block = x[:, cols] if rows is None else x[:, cols].index_select(0, rows)
        out[cols] = coef @ block.to(torch.float64)
    return out


def _normalised(w: torch.Tensor) -> torch.Tensor:
    """``w / sum(w)``, or uniform coefficients if ``w`` sums to zero (float64)."""
    total = float(w.sum())
    if total <= 0.0:
        return torch.full_like(w, 1.0 / w.numel(), dtype=torch.float64)
    return w.to(torch.float64) / total


def weighted_average(
    x: torch.Tensor, w: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Float64 weighted average of the rows of ``x`` (or of ``x[rows]`` with weights ``w``);
    uniform if ``w`` sums to zero. Returned in ``x.dtype``."""
    return weighted_rows_average(x, _normalised(w), rows)


def coordinatewise_average(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-coordinate weighted average of ``values`` (m x d) with weights ``w`` (m x d).

    Coordinates whose weights sum to zero fall back to the uniform average.
    """
    v64 = values.to(torch.float64)
    total = w.sum(dim=0)
    weighted = (w * v64).sum(dim=0) / total.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(total > 0, weighted, v64.mean(dim=0))


def is_uniform(w: torch.Tensor) -> bool:
    """Whether all weights are equal (the rules then take their unweighted paths)."""
    return bool((w == w[0]).all())


def row_norms_and_dots(
    x: torch.Tensor, other: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float64 row norms ``||x_i||`` and, if ``other`` (float64 ``(d,)``) is given, the dot
    products ``x_i . other``, in one pass over column blocks."""
    n, d = x.shape
    sq = torch.zeros(n, dtype=torch.float64, device=x.device)
    dots = None if other is None else torch.zeros(n, dtype=torch.float64, device=x.device)
    for cols in column_blocks(d, block_width(n, d, STREAM_BLOCK)):
        block = x[:, cols].to(torch.float64)
        if dots is not None and other is not None:
            dots += block @ other[cols]
        sq += (block * block).sum(dim=1)
    return sq.sqrt_(), dots


# --------------------------------------------------------------------------------------------
# Order statistics per coordinate
# --------------------------------------------------------------------------------------------

#: Block width of the order-statistic networks run by the worker threads: rows below torch's
#: intra-op grain size (32768) run on one thread each, so blocks proceed independently.
_NETWORK_WIDTH = 16384
#: Dtypes whose order statistics come from NumPy's (SIMD) sort rather than a network.
NUMPY_SORTABLE = (torch.float16, torch.float32, torch.float64)
#: Columns per block of the sorted-block kernel: the transposed ``(width × n)`` block and its
#: sort stay in the core's L2 cache for the client counts of a federation.
SORT_WIDTH = 4096
#: Below this many entries a kernel runs on the calling thread (a pool costs more than it
#: saves on small shapes).
_PARALLEL_MIN_ENTRIES = 1 << 21


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


def sorted_rows(
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


def map_order_statistics(
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
    if x.device.type == "cpu" and x.dtype in NUMPY_SORTABLE:
        _map_sorted_blocks(x, positions, consume)
        return
    width = min(d, _NETWORK_WIDTH)
    blocks = list(column_blocks(d, width))
    local = threading.local()

    def run(cols: slice) -> None:
        c = cols.stop - cols.start
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            buffer = local.buffer = torch.empty(n + 1, width, dtype=x.dtype, device=x.device)
        block = buffer[:n, :c]
        for i in range(n):  # row by row: each copy stays below the grain size
            block[i].copy_(x[i, cols])
        consume(cols, sorted_rows(block, positions, buffer[n, :c]))

    _run_blocks(run, blocks, n * d)


def _map_sorted_blocks(
    x: torch.Tensor,
    positions: tuple[int, ...],
    consume: Callable[[slice, Sequence[torch.Tensor]], None],
) -> None:
    """:func:`map_order_statistics` by sorting: each block of ``SORT_WIDTH`` columns is
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
    width = min(d, SORT_WIDTH)
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

    _run_blocks(run, list(column_blocks(d, width)), n * d)


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


# --------------------------------------------------------------------------------------------
# Pairwise distances (Gram matrix), Krum scores, stable argsort
# --------------------------------------------------------------------------------------------


def _gram(x: torch.Tensor, dtype: torch.dtype, center: torch.Tensor | None = None) -> torch.Tensor:
    """Float64 ``(n, n)`` Gram matrix of the rows of ``x`` (minus ``center``), block by block:
    block products in ``dtype``, accumulated in float64.

    On CPU each block is copied into a contiguous buffer and multiplied by its own transpose
    with NumPy, which hands ``B @ B.T`` to BLAS's symmetric rank-k update (half the
    multiply-adds of a general product)."""
    n, d = x.shape
    width = block_width(n, d, STREAM_BLOCK, 4096)
    if x.device.type == "cpu" and x.dtype in NUMPY_SORTABLE and dtype in _BLAS_DTYPES:
        values = x.detach().numpy()
        np_dtype = _BLAS_DTYPES[dtype]
        shift = None if center is None else center.detach().cpu().numpy().astype(np_dtype)
        gram_np = np.zeros((n, n), dtype=np.float64)
        buffer = np.empty((n, min(width, d)), dtype=np_dtype)
        for cols in column_blocks(d, width):
            c = cols.stop - cols.start
            block = buffer if c == buffer.shape[1] else np.empty((n, c), dtype=np_dtype)
            np.copyto(block, values[:, cols], casting="unsafe")
            if shift is not None:
                block -= shift[cols]
            gram_np += np.dot(block, block.T)
        return torch.from_numpy(gram_np)
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    part = torch.empty(n, n, dtype=dtype, device=x.device)
    for cols in column_blocks(d, width):
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
FLOAT64_GRAM_MAX_ENTRIES = 1 << 22


#: Recompute the Gram matrix around a central row when the typical pair's squared norms exceed
#: its squared distance by more than this factor (rounding error grows with the norms).
_MAX_CANCELLATION = 16.0


def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """Float64 ``(n, n)`` matrix of squared Euclidean distances between rows of ``x``.

    ``||x_i||^2 + ||x_j||^2 - 2 x_i.x_j`` from the Gram matrix (:func:`_gram`). Its rounding
    error scales with the squared norms, so when the rows share an offset that is large against
    their distances (median over pairs of ``(||x_i||^2 + ||x_j||^2) / ||x_i - x_j||^2`` above
    ``_MAX_CANCELLATION``; e.g. full models rather than deltas) the Gram matrix is recomputed
    around the medoid row (distances are translation invariant; a medoid, unlike the mean, is
    not dragged away by outliers).
    """
    gram = centred_gram(x)
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


def centred_gram(x: torch.Tensor) -> torch.Tensor:
    """Float64 Gram matrix of the rows of ``x`` minus a common centre (zero, or the medoid row
    if the rows share a large offset; see :func:`pairwise_sq_distances`)."""
    n, d = x.shape
    wide = x.dtype == torch.float64 or n * d <= FLOAT64_GRAM_MAX_ENTRIES
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


def krum_scores(sq_dist: torch.Tensor, num_neighbours: int) -> torch.Tensor:
    """Krum score of each row: sum of squared distances to its ``num_neighbours`` closest others."""
    n = sq_dist.shape[0]
    if num_neighbours <= 0 or n <= 1:
        return torch.zeros(n, dtype=sq_dist.dtype, device=sq_dist.device)
    masked = sq_dist.clone()
    masked.fill_diagonal_(math.inf)
    closest = torch.sort(masked, dim=1).values[:, :num_neighbours]
    return closest.sum(dim=1)


def stable_argsort(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Ascending argsort that breaks ties by index (deterministic)."""
    return torch.sort(values, dim=dim, stable=True).indices
