"""Partitions are built on demand: a silo's process computes only its own."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.partitioning import LazyPartitions, partition_indices


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_lazy_partitions_equal_the_full_split_and_build_only_what_is_asked(partitioner):
    labels = np.random.default_rng(0).integers(0, 4, 2_000)
    full = partition_indices(labels, 50, partitioner=partitioner, alpha=1.0, seed=3)
    lazy = LazyPartitions(labels, 50, partitioner=partitioner, alpha=1.0, seed=3)
    assert len(lazy) == 50 and not lazy._built
    for pid in (49, 0, 17):
        assert np.array_equal(lazy[pid], full[pid])
    assert sorted(lazy._built) == [0, 17, 49]  # nothing else was materialised
    # together the partitions still cover every row exactly once
    assert np.array_equal(np.sort(np.concatenate(full)), np.arange(2_000))
    with pytest.raises(IndexError, match=r"outside 0\.\.49"):
        lazy[50]


def test_a_silo_served_again_reuses_its_split():
    from fl_app.config import RunConfig
    from tasks import get_task
    from tasks.base import _partitions_cached

    task, cfg = get_task("digits"), RunConfig()
    first = task.load_partition(3, 10, cfg.data, cfg.seed)
    parts = _partitions_cached(
        task, cfg.data.source, cfg.seed, cfg.data.test_fraction, 10, cfg.data.partitioner,
        cfg.data.dirichlet_alpha,
    )  # fmt: skip
    assert ("val-split", 3, cfg.data.val_fraction) in parts.memo
    again = task.load_partition(3, 10, cfg.data, cfg.seed)
    assert np.array_equal(first.train.y, again.train.y)
    assert np.array_equal(first.val.x, again.val.x)
    assert len(first.train) + len(first.val) == len(parts[3])
