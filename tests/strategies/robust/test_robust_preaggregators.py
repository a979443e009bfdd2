"""Tests for strategies.robust.preaggregators (NNM, bucketing, compose)."""

from __future__ import annotations

import math

import pytest
import torch

from strategies.robust import (
    AGGREGATORS,
    PRE_AGGREGATORS,
    bucketing,
    compose,
    coordinate_median,
    fltrust,
    krum,
    nearest_neighbor_mixing,
    weighted_mean,
)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_registry() -> None:
    expected = {"nnm": nearest_neighbor_mixing, "bucketing": bucketing}
    assert expected == PRE_AGGREGATORS


# ----------------------------------------------------------------------------- NNM


def test_nnm_hand_computed() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mixed, w_out = nearest_neighbor_mixing(x, w, num_byzantine=1)
    # n - f = 3 nearest (self included): {0,1,2} for the first three, {10,2,1} for 10.
    torch.testing.assert_close(mixed, torch.tensor([[1.0], [1.0], [1.0], [13 / 3]]))
    torch.testing.assert_close(w_out, w)  # weights pass through unchanged
    mixed0, _ = nearest_neighbor_mixing(x, num_byzantine=0)
    torch.testing.assert_close(mixed0, x.mean(dim=0).expand(4, 1))


def test_nnm_shape_and_reduces_distance_to_honest_mean() -> None:
    honest = randn(10, 6, seed=1)
    byzantine = torch.full((3, 6), 1e6)
    x = torch.cat([honest, byzantine])
    mixed, w = nearest_neighbor_mixing(x, num_byzantine=3)
    assert mixed.shape == (13, 6)
    assert mixed.dtype == torch.float32
    assert w.shape == (13,)
    honest_mean = honest.mean(dim=0)
    before = (x - honest_mean).norm(dim=1).max()
    after = (mixed - honest_mean).norm(dim=1).max()
    assert after < before
    # Each honest row mixes only honest neighbours (n - f = 10 nearest are the honest ones).
    torch.testing.assert_close(mixed[:10], honest_mean.expand(10, 6))


def test_nnm_range_check() -> None:
    x = randn(6, 2)
    nearest_neighbor_mixing(x, num_byzantine=2)
    with pytest.raises(ValueError, match=r"num_byzantine=3 is invalid.*n > 2\*num_byzantine"):
        nearest_neighbor_mixing(x, num_byzantine=3)
    with pytest.raises(ValueError, match="updates must be finite"):
        nearest_neighbor_mixing(torch.tensor([[math.nan], [1.0], [2.0]]), num_byzantine=0)


# ----------------------------------------------------------------------------- bucketing


def test_bucketing_without_generator_keeps_client_order() -> None:
    x = torch.tensor([[1.0], [3.0], [5.0], [7.0], [9.0]])
    means, w = bucketing(x, bucket_size=2)
    torch.testing.assert_close(means, torch.tensor([[2.0], [6.0], [9.0]]))
    torch.testing.assert_close(w, torch.tensor([2.0, 2.0, 1.0]))


def test_bucketing_is_deterministic_given_seeded_generator() -> None:
    x = randn(12, 4, seed=2)
    a = bucketing(x, bucket_size=3, generator=torch.Generator().manual_seed(5))
    b = bucketing(x, bucket_size=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1], b[1])
    assert a[0].shape == (4, 4)
    # Bucket size 1 only permutes the rows.
    perm, _ = bucketing(x, bucket_size=1, generator=torch.Generator().manual_seed(5))
    assert sorted(map(tuple, perm.tolist())) == sorted(map(tuple, x.tolist()))
    # The global RNG is untouched.
    state = torch.random.get_rng_state()
    bucketing(x, bucket_size=3, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_bucketing_preserves_mean() -> None:
    x = randn(12, 4, seed=3)
    gen = torch.Generator().manual_seed(0)
    means, w = bucketing(x, bucket_size=4, generator=gen)
    assert means.shape == (3, 4)
    torch.testing.assert_close(w, torch.full((3,), 4.0))
    # Equal bucket sizes: the plain mean of the bucket means is the overall mean.
    torch.testing.assert_close(means.mean(dim=0), x.mean(dim=0))
    # Unequal buckets and weights: the weighted mean is preserved exactly.
    weights = torch.arange(1.0, 13.0)
    weights[0] = 0.0
    means, w = bucketing(x, weights, bucket_size=5, generator=gen)
    assert means.shape == (3, 4)
    torch.testing.assert_close(weighted_mean(means, w), weighted_mean(x, weights))
    torch.testing.assert_close(w.sum(), weights.sum())


def test_bucketing_zero_weight_bucket_falls_back_to_plain_mean() -> None:
    x = torch.tensor([[1.0], [3.0], [5.0], [7.0]])
    means, w = bucketing(x, torch.tensor([1.0, 1.0, 0.0, 0.0]), bucket_size=2)
    torch.testing.assert_close(means, torch.tensor([[2.0], [6.0]]))
    torch.testing.assert_close(w, torch.tensor([2.0, 0.0]))


def test_bucketing_validation() -> None:
    x = randn(5, 2)
    with pytest.raises(ValueError, match=r"bucket_size must be in \[1, 5\]"):
        bucketing(x, bucket_size=0)
    with pytest.raises(ValueError, match="bucket_size"):
        bucketing(x, bucket_size=6)
    with pytest.raises(ValueError, match="generator"):
        bucketing(x, bucket_size=2, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights must be non-negative"):
        bucketing(x, torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0]), bucket_size=2)


# ----------------------------------------------------------------------------- compose


def test_compose_nnm_krum_forwards_num_byzantine_to_both() -> None:
    x = randn(9, 3, seed=4)
    rule = compose([nearest_neighbor_mixing], krum)
    assert rule.__name__ == "nearest_neighbor_mixing+krum"
    mixed, w = nearest_neighbor_mixing(x, num_byzantine=2)
    torch.testing.assert_close(rule(x, None, num_byzantine=2), krum(mixed, w, num_byzantine=2))

    seen: dict[str, object] = {}

    def pre(
        updates: torch.Tensor, weights: torch.Tensor | None = None, *, num_byzantine: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        seen["pre"] = num_byzantine
        return updates, weights

    def agg(
        updates: torch.Tensor, weights: torch.Tensor | None = None, *, num_byzantine: int
    ) -> torch.Tensor:
        seen["agg"] = num_byzantine
        return updates[0]

    compose([pre], agg)(x, num_byzantine=3)
    assert seen == {"pre": 3, "agg": 3}


def test_compose_forwards_only_accepted_params() -> None:
    x = randn(12, 3, seed=5)
    rule = compose([PRE_AGGREGATORS["bucketing"]], AGGREGATORS["robust-median"])
    out = rule(x, bucket_size=3, generator=torch.Generator().manual_seed(1))
    means, _ = bucketing(x, bucket_size=3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, coordinate_median(means))
    # Two pre-aggregators in sequence, weights threaded through.
    rule2 = compose([nearest_neighbor_mixing, bucketing], AGGREGATORS["robust-trimmed-mean"])
    out2 = rule2(x, torch.ones(12), num_byzantine=1, bucket_size=2)
    assert out2.shape == (3,)


def test_compose_without_pre_aggregators_and_with_fltrust() -> None:
    x = randn(5, 3, seed=6)
    torch.testing.assert_close(compose([], weighted_mean)(x), weighted_mean(x))
    server = randn(3, seed=7)
    torch.testing.assert_close(
        compose([nearest_neighbor_mixing], fltrust)(x, server_update=server, num_byzantine=1),
        fltrust(nearest_neighbor_mixing(x, num_byzantine=1)[0], server),
    )


def test_compose_rejects_unknown_params_and_non_callables() -> None:
    rule = compose([nearest_neighbor_mixing], krum)
    with pytest.raises(TypeError, match="num_byzantines"):
        rule(randn(9, 3), num_byzantines=2)
    with pytest.raises(ValueError, match="callable"):
        compose(["nnm"], krum)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="num_byzantine=4 is invalid"):
        rule(randn(9, 3), num_byzantine=4)  # NNM accepts f = 4 (9 > 8); Krum needs n >= 11
