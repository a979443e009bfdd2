"""The aggregation benchmark compares like with like: on a small shape, every end-to-end pair
(our RobustAggregation vs Flower's strategy, from the reply Messages to the aggregate) and
every kernel pair agrees with Flower, and the validated chain gives the plain strategy's
result. No timing is asserted."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import aggregation as bench

SIZE = bench.Size(12, 300, 2)


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def test_end_to_end_pairs_agree_with_flower_and_validation_changes_nothing():
    x, _ = bench.make_updates(SIZE)
    pairs, validated = bench.e2e_pairs(SIZE, x)
    assert [p.flower_call for p in pairs] == [
        "FedMedian.aggregate_train",
        "FedTrimmedAvg.aggregate_train",
        "Krum.aggregate_train",
        "MultiKrum.aggregate_train",
    ]
    for pair, chain in zip(pairs, validated, strict=True):
        ours = pair.ours.run(pair.ours.prepare())
        again = pair.ours.run(pair.ours.prepare())  # the round matrix is reused
        flower = pair.flower.run(pair.flower.prepare())
        pair.check(ours, flower)
        np.testing.assert_array_equal(again, ours)
        np.testing.assert_array_equal(chain.run(chain.prepare()), ours)


def test_kernel_pairs_agree_with_flower():
    x, num_examples = bench.make_updates(SIZE)
    pairs, _, stacking = bench.build_cases(SIZE, x, num_examples)
    for pair in pairs:
        pair.check(pair.ours.run(pair.ours.prepare()), pair.flower.run(pair.flower.prepare()))
    assert stacking.run(None).shape == (1, 1)
