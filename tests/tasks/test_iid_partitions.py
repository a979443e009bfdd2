"""IID partitions are computed without flwr-datasets, and equal its partitions row for row."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tasks.partitioning import LazyPartitions


@pytest.mark.parametrize(("rows", "parts", "seed"), [(1_000, 7, 0), (1_437, 10, 42), (30, 30, 5),
                                                     (997, 1, 3), (2_001, 1_000, 42)])  # fmt: skip
def test_iid_rows_equal_flwr_datasets_iid_partitioner(rows, parts, seed):
    labels = np.random.default_rng(seed).integers(0, 3, rows)
    direct = LazyPartitions(labels, parts, partitioner="iid", alpha=1.0, seed=seed)
    reference = LazyPartitions(labels, parts, partitioner="iid", alpha=1.0, seed=seed)
    flwr = reference._flwr_partitioner()  # flwr-datasets' IidPartitioner on the same table
    pids = sorted({0, parts // 2, parts - 1})
    for pid in pids:
        expected = np.sort(np.asarray(flwr.load_partition(pid)["row"]))
        assert direct[pid].dtype == expected.dtype
        assert np.array_equal(direct[pid], expected), pid
    sizes = [len(direct[i]) for i in range(parts)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == rows
    assert np.array_equal(np.sort(np.concatenate([direct[i] for i in range(parts)])),
                          np.arange(rows))  # fmt: skip


def test_iid_partition_needs_neither_flwr_datasets_nor_the_disk_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDSILO_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "flwr_datasets", None)  # importing it would now fail
    monkeypatch.setitem(sys.modules, "flwr_datasets.partitioner", None)
    labels = np.arange(100) % 2
    parts = LazyPartitions(labels, 4, partitioner="iid", alpha=1.0, seed=1)
    assert len(parts[3]) == 25 and parts._partitioner is None
    assert not any(tmp_path.iterdir())  # nothing cached: recomputing is cheaper than a read


def _sklearn_split(labels, fraction, seed):
    """stratified_split as it was: through train_test_split."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    _, counts = np.unique(labels, return_counts=True)
    held = int(np.ceil(fraction * len(labels)))
    ok = len(counts) > 1 and counts.min() >= 2 and min(held, len(labels) - held) >= len(counts)
    keep, out = train_test_split(idx, test_size=fraction, random_state=seed,
                                 stratify=labels if ok else None, shuffle=True)  # fmt: skip
    return np.sort(keep), np.sort(out)


def test_stratified_split_equals_train_test_split_it_bypasses():
    from tasks.partitioning import stratified_split

    rng = np.random.default_rng(7)
    stratified = 0
    for trial in range(200):
        n = int(rng.integers(4, 400))
        labels = rng.integers(0, int(rng.integers(1, 6)), n) if trial % 4 else np.zeros(n, int)
        fraction = float(rng.choice([0.1, 0.2, 0.25, 0.5, 0.9]))
        seed = int(rng.integers(0, 1000))
        ours, reference = (
            stratified_split(labels, fraction, seed),
            _sklearn_split(labels, fraction, seed),
        )
        assert all(np.array_equal(a, b) for a, b in zip(ours, reference, strict=True)), trial
        stratified += len(np.unique(labels)) > 1
    assert stratified > 100
    with pytest.raises(ValueError):  # sklearn's own checks still apply to odd fractions
        stratified_split(np.arange(10) % 2, 1.5, 0)
