"""Seeded splits through flwr-datasets partitioners."""

import numpy as np
import pytest

from tasks.partitioning import partition_indices, stratified_split

LABELS = np.repeat(np.arange(10), 50)


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_partitions_are_disjoint_cover_everything_and_repeat_for_a_seed(partitioner):
    parts = partition_indices(LABELS, 8, partitioner=partitioner, alpha=0.5, seed=3)
    assert len(parts) == 8
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())) == len(LABELS)
    again = partition_indices(LABELS, 8, partitioner=partitioner, alpha=0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(LABELS, 8, partitioner=partitioner, alpha=0.5, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def _label_shares(parts):
    return np.stack([np.bincount(LABELS[p], minlength=10) / len(p) for p in parts])


def test_iid_is_balanced_and_dirichlet_is_skewed():
    iid = partition_indices(LABELS, 5, partitioner="iid", alpha=0.5, seed=0)
    assert {len(p) for p in iid} == {100}
    skew = partition_indices(LABELS, 5, partitioner="dirichlet", alpha=0.1, seed=0)
    # Mean absolute deviation of per-silo label shares from the uniform 10 %.
    iid_dev = np.abs(_label_shares(iid) - 0.1).mean()
    skew_dev = np.abs(_label_shares(skew) - 0.1).mean()
    assert skew_dev > 3 * iid_dev


def test_too_many_partitions_is_a_clear_error():
    with pytest.raises(ValueError, match="exceeds the 20 training rows"):
        partition_indices(np.zeros(20, dtype=int), 50, partitioner="iid", alpha=1.0, seed=0)


def test_stratified_split_keeps_class_shares_and_is_seeded():
    y = np.array([0] * 90 + [1] * 10)
    keep, held = stratified_split(y, 0.2, seed=1)
    assert len(held) == 20 and y[held].sum() == 2
    assert not set(keep) & set(held)
    assert np.array_equal(held, stratified_split(y, 0.2, seed=1)[1])


def test_small_silos_are_split_without_stratification():
    y = np.repeat(np.arange(10), 7)[:64]  # 64 rows, 10 classes: 7 held out < 10 classes
    keep, held = stratified_split(y, 0.1, seed=0)
    assert len(held) == 7 and len(keep) == 57 and not set(keep) & set(held)


def test_every_silo_of_a_20_silo_digits_federation_loads():
    from fl_app.config import RunConfig
    from tasks import get_task

    task, cfg = get_task("digits"), RunConfig()
    assert all(len(task.load_partition(i, 20, cfg.data, cfg.seed).val) > 0 for i in range(20))
