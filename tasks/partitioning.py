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


def partition_indices(
    labels: np.ndarray, num_partitions: int, *, partitioner: str, alpha: float, seed: int
) -> list[np.ndarray]:
    """Row indices of each partition, via flwr-datasets on an index/label table.

    The IID partitioner splits contiguous blocks, so rows are first shuffled with
    ``seed``; the Dirichlet partitioner is seeded itself. Same inputs → same split.
    """
    if num_partitions < 1:
        raise ValueError(f"num-partitions must be ≥ 1, got {num_partitions}")
    if num_partitions > len(labels):
        raise ValueError(
            f"num-partitions = {num_partitions} exceeds the {len(labels)} training rows; "
            "use fewer SuperNodes or a larger data set"
        )
    order = np.random.default_rng(seed).permutation(len(labels))
    table = Dataset.from_dict({"row": order, "label": labels[order].astype(np.int64)})
    part = make_partitioner(num_partitions, partitioner, alpha, seed)
    part.dataset = table
    return [np.sort(np.asarray(part.load_partition(i)["row"])) for i in range(num_partitions)]
