"""Seeded splits: server hold-out, per-silo partitions (flwr-datasets), local validation."""

from __future__ import annotations

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner
from sklearn.model_selection import train_test_split


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)`` with ``fraction`` held out, seeded; stratified when
    every class has at least two members and both sides can hold every class (small silos
    are split unstratified)."""
    idx = np.arange(len(labels))
    _, counts = np.unique(labels, return_counts=True)
    held = int(np.ceil(fraction * len(labels)))
    stratify = (
        labels
        if len(counts) > 1
        and counts.min() >= 2
        and min(held, len(labels) - held) >= len(counts)
        else None
    )
    keep, held = train_test_split(
        idx, test_size=fraction, random_state=seed, stratify=stratify, shuffle=True
    )
    return np.sort(keep), np.sort(held)


def make_partitioner(
    num_partitions: int, partitioner: str, alpha: float, seed: int
) -> Partitioner:
    """A flwr-datasets partitioner over a ``label`` column."""
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
    the IID one shards on demand.

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
        order = np.random.default_rng(seed).permutation(len(labels))
        table = Dataset.from_dict({"row": order, "label": labels[order].astype(np.int64)})
        self._partitioner = make_partitioner(num_partitions, partitioner, alpha, seed)
        self._partitioner.dataset = table
        self._num_partitions = num_partitions
        self._built: dict[int, np.ndarray] = {}
        #: Derived per-partition data callers keep with the partition (e.g. its
        #: train/validation split), so a process serving a silo again reuses it.
        self.memo: dict = {}

    def __len__(self) -> int:
        return self._num_partitions

    def __getitem__(self, partition_id: int) -> np.ndarray:
        if not 0 <= partition_id < self._num_partitions:
            raise IndexError(f"partition {partition_id} outside 0..{self._num_partitions - 1}")
        if partition_id not in self._built:
            rows = self._partitioner.load_partition(partition_id)["row"]
            self._built[partition_id] = np.sort(np.asarray(rows))
        return self._built[partition_id]


def partition_indices(
    labels: np.ndarray, num_partitions: int, *, partitioner: str, alpha: float, seed: int
) -> list[np.ndarray]:
    """Row indices of every partition (see :class:`LazyPartitions`)."""
    parts = LazyPartitions(
        labels, num_partitions, partitioner=partitioner, alpha=alpha, seed=seed
    )
    return [parts[i] for i in range(num_partitions)]
