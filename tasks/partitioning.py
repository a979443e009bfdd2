"""Seeded splits: server hold-out, per-silo partitions (flwr-datasets), local validation.

Every message a SuperNode receives starts a fresh ClientApp process, and importing
flwr-datasets (with ``datasets``, seaborn and scipy behind it) costs several seconds of CPU
in each. IID partitions are computed without it (the same rows); Dirichlet partition
indices are cached on disk (``FEDSILO_CACHE_DIR``, default ``~/.cache/fedsilo``), keyed by
a hash of the labels, the partitioner's parameters and the flwr-datasets version, and
flwr-datasets is imported only on a cache miss. The cache holds row indices only (no
data); ``FEDSILO_CACHE_DIR=""`` turns it off.
"""

from __future__ import annotations

import hashlib
import math
import os
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)`` with ``fraction`` held out, seeded; stratified when
    every class has at least two members and both sides can hold every class (small silos
    are split unstratified)."""
    from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit, train_test_split

    idx = np.arange(len(labels))
    _, counts = np.unique(labels, return_counts=True)
    held = int(np.ceil(fraction * len(labels)))
    stratify = (
        labels
        if len(counts) > 1 and counts.min() >= 2 and min(held, len(labels) - held) >= len(counts)
        else None
    )
    n_test = math.ceil(fraction * len(labels))  # as train_test_split sizes a float fraction
    n_train = len(labels) - n_test
    if not (isinstance(fraction, float) and 0 < fraction < 1 and n_train > 0 and n_test > 0):
        keep, held = train_test_split(  # edge cases: sklearn's own checks and messages
            idx, test_size=fraction, random_state=seed, stratify=stratify, shuffle=True
        )
        return np.sort(keep), np.sort(held)
    # What train_test_split does for these arguments, minus its argument validation and
    # indexing (~2/3 of its ~3 ms; every silo splits once per process, 1 000 silos in the
    # roll call): the first split of the same splitter; rows are idx[split] = split.
    splitter = (StratifiedShuffleSplit if stratify is not None else ShuffleSplit)(
        test_size=n_test, train_size=n_train, random_state=seed
    )
    keep, held = next(splitter.split(idx, stratify))
    return np.sort(keep), np.sort(held)


def make_partitioner(num_partitions: int, partitioner: str, alpha: float, seed: int) -> Partitioner:
    """A flwr-datasets partitioner over a ``label`` column."""
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if partitioner == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if partitioner == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=2,
            self_balancing=False,
            seed=seed,
        )
    raise ValueError(f"partitioner '{partitioner}' is not one of: iid, dirichlet")


class LazyPartitions:
    """Row indices of each partition, via flwr-datasets on an index/label table, built
    only when asked for: ``parts[i]`` computes (and keeps) partition ``i`` alone.

    A silo's process needs one partition; building all of them (as a list) costs
    ~17 ms each with flwr-datasets' IID partitioner, i.e. ~17 s per process for 1 000
    silos. The Dirichlet partitioner assigns all rows in one go on first use (it must);
    IID partitions are computed directly (the same rows as flwr-datasets' IID partitioner,
    which shards the shuffled table into contiguous blocks), without flwr-datasets or the
    disk cache.

    The IID partitioner splits contiguous blocks, so rows are first shuffled with
    ``seed``; the Dirichlet partitioner is seeded itself. Same inputs → same split.
    """

    def __init__(
        self, labels: np.ndarray, num_partitions: int, *, partitioner: str, alpha: float, seed: int
    ) -> None:
        if num_partitions < 1:
            raise ValueError(f"num-partitions must be ≥ 1, got {num_partitions}")
        if num_partitions > len(labels):
            raise ValueError(
                f"num-partitions = {num_partitions} exceeds the {len(labels)} training rows; "
                "use fewer SuperNodes or a larger data set"
            )
        if partitioner not in ("iid", "dirichlet"):
            raise ValueError(f"partitioner '{partitioner}' is not one of: iid, dirichlet")
        self._labels = labels
        self._params = (partitioner, alpha, seed)
        self._partitioner: Partitioner | None = None  # built on a cache miss
        self._num_partitions = num_partitions
        self._cache_key = _cache_key(labels, num_partitions, partitioner, alpha, seed)
        self._built: dict[int, np.ndarray] = {}
        self._order: np.ndarray | None = None  # the IID shuffle, drawn on first use
        #: Derived per-partition data callers keep with the partition (e.g. its
        #: train/validation split), so a process serving a silo again reuses it.
        self.memo: dict = {}

    def __len__(self) -> int:
        return self._num_partitions

    def __getitem__(self, partition_id: int) -> np.ndarray:
        if not 0 <= partition_id < self._num_partitions:
            raise IndexError(f"partition {partition_id} outside 0..{self._num_partitions - 1}")
        if partition_id not in self._built and self._params[0] == "iid":
            self._built[partition_id] = self._iid_rows(partition_id)
        if partition_id not in self._built:
            cached = _cache_path(self._cache_key, partition_id)
            rows = _read_cached(cached)
            if rows is None:
                rows = np.sort(
                    np.asarray(self._flwr_partitioner().load_partition(partition_id)["row"])
                )
                _write_cached(cached, rows)
            self._built[partition_id] = rows
        return self._built[partition_id]

    def _iid_rows(self, partition_id: int) -> np.ndarray:
        """Partition ``partition_id`` of flwr-datasets' ``IidPartitioner`` over the shuffled
        table, computed directly: it is ``Dataset.shard(n, i, contiguous=True)``, i.e. the
        ``i``-th of ``n`` contiguous blocks whose first ``len % n`` are one row longer.
        Same rows as flwr-datasets (a test compares them), without importing ``datasets``
        (~4 s per process) or reading the cache (a silo's roll-call reply in a fresh
        process paid both)."""
        if self._order is None:
            self._order = np.random.default_rng(self._params[2]).permutation(len(self._labels))
        div, mod = divmod(len(self._labels), self._num_partitions)
        start = div * partition_id + min(partition_id, mod)
        end = start + div + (1 if partition_id < mod else 0)
        return np.sort(self._order[start:end])

    def _flwr_partitioner(self) -> Partitioner:
        if self._partitioner is None:
            from datasets import Dataset

            partitioner, alpha, seed = self._params
            labels = self._labels
            order = np.random.default_rng(seed).permutation(len(labels))
            table = Dataset.from_dict({"row": order, "label": labels[order].astype(np.int64)})
            self._partitioner = make_partitioner(self._num_partitions, partitioner, alpha, seed)
            self._partitioner.dataset = table
        return self._partitioner


def _cache_dir() -> Path | None:
    configured = os.environ.get("FEDSILO_CACHE_DIR")
    if configured == "":
        return None
    return Path(configured) if configured else Path.home() / ".cache" / "fedsilo"


#: Bump when the way partitions are computed changes (stale cache entries are then ignored).
CACHE_VERSION = 1


def _cache_key(labels: np.ndarray, n: int, partitioner: str, alpha: float, seed: int) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(labels).astype(np.int64).tobytes())
    h.update(
        repr(
            (CACHE_VERSION, n, partitioner, float(alpha), int(seed), version("flwr-datasets"))
        ).encode()
    )
    return h.hexdigest()[:32]


def _cache_path(key: str, partition_id: int) -> Path | None:
    root = _cache_dir()
    return None if root is None else root / "partitions" / f"{key}-{partition_id}.npy"


def _read_cached(path: Path | None) -> np.ndarray | None:
    if path is None or not path.is_file():
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError):  # a torn or foreign file: recompute
        return None


def _write_cached(path: Path | None, rows: np.ndarray) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, rows, allow_pickle=False)
        os.replace(tmp, path)  # atomic: readers see the old state or the whole file
    except OSError:  # read-only home etc.: the cache is an optimisation only
        pass


def partition_indices(
    labels: np.ndarray, num_partitions: int, *, partitioner: str, alpha: float, seed: int
) -> list[np.ndarray]:
    """Row indices of every partition (see :class:`LazyPartitions`)."""
    parts = LazyPartitions(labels, num_partitions, partitioner=partitioner, alpha=alpha, seed=seed)
    return [parts[i] for i in range(num_partitions)]
