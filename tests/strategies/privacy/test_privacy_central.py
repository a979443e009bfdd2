"""Central DP-FedAvg: the pure tensor functions and the DPFedAvg strategy on real flwr
Message objects."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
from dp_accounting.rdp import RdpAccountant
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as fl
from flwr.supercore.task_identity import TaskIdentity
from scipy import stats

from strategies.privacy.accountant import FederatedAccountant, PrivacyBudget
from strategies.privacy.central import (
    AdaptiveClipping,
    DPFedAvg,
    adaptive_clip_update,
    clip_updates,
    dp_fedavg_aggregate,
    gaussian_noise_sum,
    poisson_cohort,
    unclipped_fraction,
)
from strategies.robust import coordinate_median
from strategies.robust.strategy import RobustAggregation
from strategies.wrappers import SeededSampling, ValidatedUpdates

DELTA = 1e-5


# ============================================================================ pure functions
def test_clip_updates_bounds_every_row_and_keeps_small_rows():
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.01, 0.5, 1.0, 3.0, 100.0, 1e6])[:, None]
    updates = torch.randn(6, 1000, generator=gen) * scales
    clipped, norms = clip_updates(updates, clip_norm=2.0)
    out_norms = torch.linalg.vector_norm(clipped.double(), dim=1)
    assert bool((out_norms <= 2.0 * (1 + 1e-6)).all())
    assert torch.allclose(norms, torch.linalg.vector_norm(updates.double(), dim=1))
    small = norms <= 2.0
    assert torch.equal(clipped[small], updates[small])  # not touched
    # Large rows are scaled (direction kept) to norm C.
    cos = torch.nn.functional.cosine_similarity(clipped[~small], updates[~small], dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    assert torch.allclose(out_norms[~small], torch.full_like(out_norms[~small], 2.0), rtol=1e-6)


def test_clip_updates_zeroes_non_finite_rows():
    updates = torch.ones(3, 4)
    updates[1, 2] = math.nan
    updates[2, 0] = math.inf
    clipped, norms = clip_updates(updates, 1.0)
    assert torch.equal(clipped[1:], torch.zeros(2, 4))
    assert math.isinf(norms[1]) and math.isinf(norms[2])
    assert torch.linalg.vector_norm(clipped[0]) == pytest.approx(1.0)


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, math.inf, math.nan])
def test_clip_norm_must_be_positive_and_finite(clip_norm):
    with pytest.raises(ValueError, match="clip_norm must be a finite number > 0"):
        clip_updates(torch.ones(2, 3), clip_norm)


def test_clip_updates_needs_a_matrix():
    with pytest.raises(ValueError, match="2-D"):
        clip_updates(torch.ones(3), 1.0)


def test_added_noise_has_std_sigma_times_c_chi_square():
    d, sigma, clip_norm = 200_000, 1.3, 0.7
    clipped = torch.zeros(4, d)
    noised = gaussian_noise_sum(clipped, sigma, clip_norm, torch.Generator().manual_seed(7))
    noise = noised.double().numpy()
    expected_std = sigma * clip_norm
    # Variance: (d−1)s²/σ² ~ χ²(d−1); two-sided test at level 0.001.
    statistic = (d - 1) * noise.var(ddof=1) / expected_std**2
    p_value = 2 * min(stats.chi2.cdf(statistic, d - 1), stats.chi2.sf(statistic, d - 1))
    assert p_value > 1e-3, (noise.std(ddof=1), expected_std)
    assert noise.std(ddof=1) == pytest.approx(expected_std, rel=0.01)
    # Mean: z-test.
    assert abs(noise.mean()) < 4 * expected_std / math.sqrt(d)
    # Normality (KS against N(0, σC)).
    assert stats.kstest(noise / expected_std, "norm").pvalue > 1e-3


def test_noise_sum_is_seeded_and_exact_without_noise():
    updates = torch.randn(5, 100, generator=torch.Generator().manual_seed(1))
    a = gaussian_noise_sum(updates, 1.0, 1.0, torch.Generator().manual_seed(3))
    b = gaussian_noise_sum(updates, 1.0, 1.0, torch.Generator().manual_seed(3))
    c = gaussian_noise_sum(updates, 1.0, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(gaussian_noise_sum(updates, 0.0, 1.0), updates.sum(0))


def test_dp_fedavg_divides_by_the_expected_clients_not_the_replies():
    updates = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, -1.0]])
    out = dp_fedavg_aggregate(updates, clip_norm=1.0, noise_multiplier=0.0, expected_clients=5)
    expected = torch.tensor([0.6, 0.8]) + torch.tensor([0.3, 0.4]) + torch.tensor([0.0, -1.0])
    assert torch.allclose(out, expected / 5)


def test_dp_fedavg_sensitivity_is_c_over_m():
    gen = torch.Generator().manual_seed(0)
    honest = torch.randn(9, 50, generator=gen)
    outlier = 1e4 * torch.randn(1, 50, generator=gen)
    without = dp_fedavg_aggregate(honest, 0.5, 0.0, expected_clients=10)
    with_outlier = dp_fedavg_aggregate(torch.cat([honest, outlier]), 0.5, 0.0, expected_clients=10)
    assert float(torch.linalg.vector_norm(with_outlier - without)) <= 0.5 / 10 * (1 + 1e-6)


def test_dp_fedavg_noise_std_is_sigma_c_over_m():
    d, m, sigma, c = 100_000, 8, 1.1, 2.0
    updates = torch.zeros(m, d)
    out = dp_fedavg_aggregate(updates, c, sigma, m, torch.Generator().manual_seed(11))
    assert float(out.double().std()) == pytest.approx(sigma * c / m, rel=0.02)


def test_dp_fedavg_rejects_too_small_denominator():
    with pytest.raises(ValueError, match="expected_clients = 2 must be"):
        dp_fedavg_aggregate(torch.ones(3, 2), 1.0, 1.0, expected_clients=2)


def test_unclipped_fraction_is_centred_with_fixed_denominator():
    norms = torch.tensor([0.5, 2.0, 0.1, 3.0])
    assert unclipped_fraction(norms, 1.0, expected_clients=4) == pytest.approx(0.5)
    # Two of five sampled clients answered, both unclipped: 1/2 + (2 × 1/2)/5.
    assert unclipped_fraction(torch.tensor([0.1, 0.2]), 1.0, 5) == pytest.approx(0.7)


def test_adaptive_clip_update_is_the_geometric_rule():
    down = adaptive_clip_update(1.0, 0.9, 0.5, 0.2, 0.0, expected_clients=10)
    assert down.clip_norm == pytest.approx(math.exp(-0.2 * 0.4))
    up = adaptive_clip_update(1.0, 0.1, 0.5, 0.2, 0.0, expected_clients=10)
    assert up.clip_norm == pytest.approx(math.exp(0.2 * 0.4))
    same = adaptive_clip_update(1.0, 0.5, 0.5, 0.2, 0.0, expected_clients=10)
    assert same.clip_norm == pytest.approx(1.0)


def test_adaptive_clipping_tracks_the_target_quantile():
    gen = torch.Generator().manual_seed(5)
    norms_dist = torch.distributions.LogNormal(0.0, 0.5)
    torch.manual_seed(0)
    clip_norm, m = 0.05, 50
    for _ in range(300):
        norms = norms_dist.sample((m,))
        frac = unclipped_fraction(norms, clip_norm, m)
        clip_norm = adaptive_clip_update(
            clip_norm, frac, 0.5, 0.2, m / 20, gen, expected_clients=m
        ).clip_norm
    assert clip_norm == pytest.approx(1.0, rel=0.25)  # median of LogNormal(0, σ) is 1


def test_adaptive_count_noise_has_std_sigma_b_over_m():
    gen = torch.Generator().manual_seed(2)
    draws = [
        adaptive_clip_update(
            1.0, 0.5, 0.5, 0.2, 2.0, gen, expected_clients=40
        ).noisy_unclipped_fraction
        for _ in range(4000)
    ]
    assert float(np.std(draws)) == pytest.approx(2.0 / 40, rel=0.05)


def test_adaptive_clip_update_validates():
    with pytest.raises(ValueError, match="target_quantile"):
        adaptive_clip_update(1.0, 0.5, 1.5, 0.2, 0.0, expected_clients=3)
    with pytest.raises(ValueError, match="lr"):
        adaptive_clip_update(1.0, 0.5, 0.5, 0.0, 0.0, expected_clients=3)
    with pytest.raises(ValueError, match="noise_std_for_count"):
        adaptive_clip_update(1.0, 0.5, 0.5, 0.2, -1.0, expected_clients=3)


# ============================================================================ the strategy
@pytest.fixture(autouse=True)
def task_identity():
    """Messages need a task identity (set by Flower's runtime in a real run)."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 1
    TaskIdentity.task_id = 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class FakeGrid:
    """The Grid surface strategies use; replies come from a callable."""

    def __init__(self, num_nodes: int, reply_fn=None) -> None:
        self.nodes = list(range(101, 101 + num_nodes))
        self.reply_fn = reply_fn
        self.sent: list[list[Message]] = []

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.sent.append(messages)
        return [self.reply_fn(msg) for msg in messages]


def global_arrays() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord(
        {
            "standardize.mean": Array(np.zeros(3, dtype=np.float32)),
            "net.weight": Array(rng.normal(size=(4, 3)).astype(np.float32)),
            "net.bias": Array(rng.normal(size=4).astype(np.float32)),
        }
    )


TRAINED = ("net.weight", "net.bias")


def reply(node: int, arrays: ArrayRecord, num_examples: int = 10, loss: float = 0.5) -> Message:
    content = RecordDict(
        {
            "arrays": arrays,
            "metrics": MetricRecord({"num-examples": num_examples, "train-loss": loss}),
        }
    )
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=node, message_type="train"))


def shifted(arrays: ArrayRecord, deltas: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(
        {
            k: Array(arrays[k].numpy() + np.asarray(deltas.get(k, 0.0), dtype=np.float32))
            for k in arrays
        }
    )


def flat_trained(arrays: ArrayRecord) -> np.ndarray:
    return np.concatenate([arrays[k].numpy().ravel() for k in TRAINED]).astype(np.float64)


def fedavg(**kwargs) -> fl.FedAvg:
    defaults = {
        "fraction_train": 0.5,
        "fraction_evaluate": 0.0,
        "min_train_nodes": 1,
        "min_available_nodes": 1,
    }
    return fl.FedAvg(**{**defaults, **kwargs})


def make_replies(messages, current, scale, seed=0, num_examples=None):
    rng = np.random.default_rng(seed)
    out, deltas = [], []
    for i, msg in enumerate(messages):
        delta = {k: rng.normal(scale=scale, size=current[k].shape) for k in TRAINED}
        delta["standardize.mean"] = rng.normal(size=3)  # a client tampering with a buffer
        deltas.append(np.concatenate([delta[k].ravel() for k in TRAINED]))
        out.append(
            reply(
                msg.metadata.dst_node_id,
                shifted(current, delta),
                num_examples=(num_examples or [10] * len(messages))[i],
            )
        )
    width = sum(current[k].numpy().size for k in TRAINED)
    return out, np.stack(deltas) if deltas else np.zeros((0, width))


def test_dp_fedavg_round_clips_noises_and_reports_epsilon():
    current = global_arrays()
    strategy = DPFedAvg(
        fedavg(),
        noise_multiplier=1.2,
        clip_norm=0.5,
        delta=DELTA,
        generator=torch.Generator().manual_seed(42),
        trained_keys=TRAINED,
    )
    grid = FakeGrid(10)
    messages = list(strategy.configure_train(1, current, ConfigRecord(), grid))
    assert len(messages) == 5
    replies, deltas = make_replies(messages, current, scale=1.0, num_examples=[1, 1000, 5, 7, 9])
    arrays, metrics = strategy.aggregate_train(1, replies)

    # Same computation by hand: uniform weights despite num-examples, fixed denominator 5.
    expected = dp_fedavg_aggregate(
        torch.from_numpy(deltas).float(), 0.5, 1.2, 5, torch.Generator().manual_seed(42)
    )
    got = flat_trained(arrays) - flat_trained(current)
    np.testing.assert_allclose(got, expected.double().numpy(), atol=1e-5)
    # Untrained buffers keep the global value (no noise, clients' tampering ignored).
    np.testing.assert_array_equal(
        arrays["standardize.mean"].numpy(), current["standardize.mean"].numpy()
    )
    assert arrays["net.weight"].numpy().dtype == np.float32

    assert metrics["noise-multiplier"] == 1.2
    assert metrics["clip-norm"] == 0.5
    assert metrics["delta"] == DELTA
    assert metrics["train-loss"] == pytest.approx(0.5)  # client metrics still aggregated
    # Flower's fixed-size sample from a public seed is no secret: accounted at rate 1.
    reference = FederatedAccountant("rdp")
    reference.step(noise_multiplier=1.2, sample_rate=1.0)
    assert metrics["epsilon"] == pytest.approx(reference.epsilon(DELTA))
    assert strategy.accountant.history == [(1.2, 1.0, 1)]


def test_reported_epsilon_matches_dp_accounting_over_rounds():
    current = global_arrays()
    strategy = DPFedAvg(
        fedavg(fraction_train=1.0),
        noise_multiplier=0.9,
        clip_norm=1.0,
        delta=DELTA,
        sampling_amplification=True,
        sample_rate=0.3,
        num_clients=10,
    )
    grid = FakeGrid(10)
    independent = RdpAccountant()
    for rnd in range(1, 6):
        messages = list(strategy.configure_train(rnd, current, ConfigRecord(), grid))
        replies, _ = make_replies(messages, current, scale=0.1, seed=rnd)
        current, metrics = strategy.aggregate_train(rnd, replies)
        independent.compose(PoissonSampledDpEvent(0.3, GaussianDpEvent(0.9)))
        assert metrics["epsilon"] == pytest.approx(independent.get_epsilon(DELTA), rel=0.01)


def test_one_huge_update_moves_the_model_by_at_most_c_over_m():
    current = global_arrays()
    strategy = DPFedAvg(
        fedavg(fraction_train=1.0),
        noise_multiplier=0.0,
        clip_norm=0.3,
        delta=DELTA,
        trained_keys=TRAINED,
    )
    messages = list(strategy.configure_train(1, current, ConfigRecord(), FakeGrid(4)))
    zero = {k: np.zeros(current[k].shape) for k in TRAINED}
    huge = {k: np.full(current[k].shape, 1e6) for k in TRAINED}
    replies = [
        reply(m.metadata.dst_node_id, shifted(current, huge if i == 0 else zero))
        for i, m in enumerate(messages)
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    moved = np.linalg.norm(flat_trained(arrays) - flat_trained(current))
    assert moved == pytest.approx(0.3 / 4, rel=1e-5)
    assert math.isinf(metrics["epsilon"])  # σ = 0: no privacy, reported honestly


def test_failed_replies_keep_the_fixed_denominator():
    current = global_arrays()
    strategy = DPFedAvg(
        fedavg(), noise_multiplier=0.0, clip_norm=10.0, delta=DELTA, trained_keys=TRAINED
    )
    messages = list(strategy.configure_train(1, current, ConfigRecord(), FakeGrid(10)))
    ones = {k: np.ones(current[k].shape) for k in TRAINED}
    replies = [reply(m.metadata.dst_node_id, shifted(current, ones)) for m in messages[:2]]
    replies += [Message(Error(code=0, reason="silo offline"), reply_to=m) for m in messages[2:]]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(flat_trained(arrays) - flat_trained(current), 2 / 5, rtol=1e-6)


def test_no_replies_release_nothing_and_spend_nothing():
    current = global_arrays()
    strategy = DPFedAvg(fedavg(), noise_multiplier=1.0, clip_norm=1.0, delta=DELTA)
    list(strategy.configure_train(1, current, ConfigRecord(), FakeGrid(10)))
    assert strategy.aggregate_train(1, []) == (None, None)
    assert strategy.accountant.history == []


@pytest.mark.parametrize(
    "unsound",
    [
        fl.FedMedian(),
        fl.FedTrimmedAvg(),
        fl.Krum(num_malicious_nodes=1),
        fl.MultiKrum(num_malicious_nodes=1),
        fl.Bulyan(num_malicious_nodes=1),
    ],
    ids=lambda s: type(s).__name__,
)
def test_refuses_strategies_that_take_individual_updates(unsound):
    with pytest.raises(ValueError, match=f"cannot wrap {type(unsound).__name__}.*individual"):
        DPFedAvg(unsound, noise_multiplier=1.0, clip_norm=1.0, delta=DELTA)


def test_refuses_our_robust_aggregation():
    robust = RobustAggregation(coordinate_median)
    with pytest.raises(ValueError, match="cannot wrap RobustAggregation"):
        DPFedAvg(robust, noise_multiplier=1.0, clip_norm=1.0, delta=DELTA)


def test_refuses_to_wrap_a_wrapper():
    wrapped = SeededSampling(fl.FedAvg(), seed=0, node_partitions={})
    with pytest.raises(ValueError, match="not the wrapper SeededSampling"):
        DPFedAvg(wrapped, noise_multiplier=1.0, clip_norm=1.0, delta=DELTA)


@pytest.mark.parametrize(
    "sound",
    [
        fl.FedAvg(),
        fl.FedProx(proximal_mu=0.1),
        fl.FedAdam(),
        fl.FedYogi(),
        fl.FedAdagrad(),
        fl.FedAvgM(),
    ],
    ids=lambda s: type(s).__name__,
)
def test_accepts_mean_based_strategies(sound):
    assert DPFedAvg(sound, noise_multiplier=1.0, clip_norm=1.0, delta=DELTA).inner is sound


def test_constructor_validation():
    with pytest.raises(ValueError, match="clip_norm"):
        DPFedAvg(fl.FedAvg(), noise_multiplier=1.0, clip_norm=0.0, delta=DELTA)
    with pytest.raises(ValueError, match="noise_multiplier must be ≥ 0"):
        DPFedAvg(fl.FedAvg(), noise_multiplier=-1.0, clip_norm=1.0, delta=DELTA)
    with pytest.raises(ValueError, match="needs delta"):
        DPFedAvg(fl.FedAvg(), noise_multiplier=1.0, clip_norm=1.0)
    with pytest.raises(ValueError, match=r"differs from budget\.target_delta"):
        DPFedAvg(
            fl.FedAvg(),
            noise_multiplier=1.0,
            clip_norm=1.0,
            delta=1e-6,
            budget=PrivacyBudget(1.0, 1e-5),
        )
    with pytest.raises(ValueError, match="count noise std"):
        DPFedAvg(
            fl.FedAvg(),
            noise_multiplier=1.0,
            clip_norm=1.0,
            delta=DELTA,
            adaptive=AdaptiveClipping(count_noise_std=0.4),
        )


def test_unknown_trained_keys_are_refused():
    strategy = DPFedAvg(
        fedavg(),
        noise_multiplier=1.0,
        clip_norm=1.0,
        delta=DELTA,
        trained_keys=["net.weight", "head.weight"],
    )
    with pytest.raises(ValueError, match=r"trained_keys \['head.weight'\] are not arrays"):
        strategy.configure_train(1, global_arrays(), ConfigRecord(), FakeGrid(4))


def test_fedadam_applies_its_server_step_to_the_noised_mean():
    current = global_arrays()
    strategy = DPFedAvg(
        fl.FedAdam(fraction_train=1.0, fraction_evaluate=0.0, eta=0.1),
        noise_multiplier=0.5,
        clip_norm=1.0,
        delta=DELTA,
        generator=torch.Generator().manual_seed(0),
        trained_keys=TRAINED,
    )
    messages = list(strategy.configure_train(1, current, ConfigRecord(), FakeGrid(3)))
    replies, deltas = make_replies(messages, current, scale=0.1)
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert list(arrays.keys()) == list(current.keys())
    step = flat_trained(arrays) - flat_trained(current)
    noised_mean = (
        dp_fedavg_aggregate(
            torch.from_numpy(deltas).float(), 1.0, 0.5, 3, torch.Generator().manual_seed(0)
        )
        .double()
        .numpy()
    )
    # Adam's first step: each coordinate moves by at most eta, in the noised mean's direction.
    assert np.all(np.abs(step) <= 0.1 + 1e-6)
    np.testing.assert_array_equal(np.sign(step), np.sign(noised_mean))
    assert not np.allclose(step, noised_mean)  # the server optimiser did act
    assert metrics["epsilon"] > 0


def test_adaptive_clipping_adapts_and_reports_the_unclipped_fraction():
    current = global_arrays()
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_noise_std=1.0)
    strategy = DPFedAvg(
        fedavg(fraction_train=1.0),
        noise_multiplier=0.5,
        clip_norm=0.01,
        delta=DELTA,
        adaptive=adaptive,
        trained_keys=TRAINED,
        generator=torch.Generator().manual_seed(1),
    )
    grid = FakeGrid(10)
    used = []
    for rnd in range(1, 4):
        messages = list(strategy.configure_train(rnd, current, ConfigRecord(), grid))
        replies, _ = make_replies(messages, current, scale=1.0, seed=rnd)
        _, metrics = strategy.aggregate_train(rnd, replies)
        used.append(metrics["clip-norm"])
        assert "unclipped-fraction" in metrics
    # All updates are far above C = 0.01: C grows geometrically.
    assert used[0] == 0.01 and used[1] > used[0] and used[2] > used[1]
    assert strategy.accountant.history == [(0.5, 1.0, 3)]  # accounted at the total σ


def test_budget_stop_mode_in_flowers_start_loop():
    """Run Flower's own Strategy.start: once the budget is spent, configure_train sends no
    messages, aggregate_train gets no replies, the model stays and no ε is spent."""
    current = global_arrays()
    budget = PrivacyBudget(target_epsilon=6.0, target_delta=DELTA)
    strategy = DPFedAvg(
        fedavg(fraction_train=0.2),
        noise_multiplier=1.5,
        clip_norm=1.0,
        budget=budget,
        generator=torch.Generator().manual_seed(0),
        trained_keys=TRAINED,
    )
    rng = np.random.default_rng(0)

    def client(msg: Message) -> Message:
        arrays = msg.content["arrays"]
        delta = {k: rng.normal(size=arrays[k].shape) for k in TRAINED}
        return reply(msg.metadata.dst_node_id, shifted(arrays, delta))

    grid = FakeGrid(10, client)
    models: dict[int, np.ndarray] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        models[server_round] = flat_trained(arrays)  # Flower calls it after every round
        return MetricRecord({"round": server_round})

    result = strategy.start(grid, current, num_rounds=12, timeout=1.0, evaluate_fn=evaluate_fn)

    trained = sorted(result.train_metrics_clientapp)
    assert trained == list(range(1, len(trained) + 1))  # a prefix of rounds trained
    assert 1 <= len(trained) < 12
    epsilons = [result.train_metrics_clientapp[r]["epsilon"] for r in trained]
    assert max(epsilons) <= 6.0 and epsilons == sorted(epsilons)
    # After the budget ran out: empty rounds, nothing spent, final model = last release.
    train_rounds = [batch for batch in grid.sent if batch]
    assert len(train_rounds) == len(trained)
    assert strategy.accountant.num_steps == len(trained)
    assert strategy.privacy_spent() == pytest.approx(epsilons[-1])
    assert not budget.can_afford_next_round(
        strategy.accountant, noise_multiplier=1.5, sample_rate=1.0
    )
    last = len(trained)
    assert not np.array_equal(models[last], models[0])
    for rnd in range(last + 1, 13):
        np.testing.assert_array_equal(models[rnd], models[last])
    np.testing.assert_array_equal(flat_trained(result.arrays), models[last])


def test_budget_spent_before_round_one_leaves_result_arrays_empty():
    """Flower only sets Result.arrays from an aggregate: the ServerApp must fall back to
    its initial arrays when no round could be afforded."""
    budget = PrivacyBudget(target_epsilon=0.01, target_delta=DELTA)
    strategy = DPFedAvg(fedavg(), noise_multiplier=0.5, clip_norm=1.0, budget=budget)
    grid = FakeGrid(4, lambda msg: pytest.fail("no message may be sent"))
    result = strategy.start(grid, global_arrays(), num_rounds=2, timeout=1.0)
    assert len(result.arrays) == 0 and result.train_metrics_clientapp == {}
    assert strategy.accountant.history == []


def test_sampling_amplification_off_accounts_at_rate_one():
    current = global_arrays()
    strategy = DPFedAvg(
        fedavg(), noise_multiplier=1.0, clip_norm=1.0, delta=DELTA, sampling_amplification=False
    )
    messages = list(strategy.configure_train(1, current, ConfigRecord(), FakeGrid(10)))
    replies, _ = make_replies(messages, current, scale=0.1)
    strategy.aggregate_train(1, replies)
    assert strategy.accountant.history == [(1.0, 1.0, 1)]


def test_state_dict_restores_accountant_clip_norm_and_generators():
    strategy = DPFedAvg(fedavg(), noise_multiplier=1.0, clip_norm=0.7, delta=DELTA)
    strategy.accountant.step(3, sample_rate=0.5)
    state = strategy.state_dict()
    assert state["class"] == "DPFedAvg" and state["inner"] == {"class": "FedAvg", "state": {}}
    resumed = DPFedAvg(fedavg(), noise_multiplier=1.0, clip_norm=1.0, delta=DELTA)
    resumed.load_state_dict(state)
    assert resumed.accountant.history == strategy.accountant.history
    assert resumed.clip_norm == 0.7
    for name in ("generator", "sampling_generator"):
        assert torch.equal(getattr(resumed, name).get_state(), getattr(strategy, name).get_state())


# ============================================================================ secret randomness
def test_default_generators_are_secret_and_distinct():
    """Unseeded DPFedAvg draws its noise and sampling generators' whole states from
    os.urandom: two strategies built alike get four different streams, none of them
    torch's default generator's."""
    built = [DPFedAvg(fedavg(), noise_multiplier=1.0, clip_norm=1.0, delta=DELTA) for _ in "ab"]
    gens = [g for s in built for g in (s.generator, s.sampling_generator)]
    first = [tuple(torch.randn(8, generator=g).tolist()) for g in gens]
    assert len(set(first)) == 4
    default = torch.Generator().manual_seed(torch.default_generator.initial_seed())
    assert tuple(torch.randn(8, generator=default).tolist()) not in first


def test_poisson_cohort_takes_each_candidate_independently_with_probability_q():
    n, q, trials = 40, 0.25, 4000
    gen = torch.Generator().manual_seed(3)
    taken = torch.zeros(trials, n)
    for t in range(trials):
        taken[t, poisson_cohort(n, q, gen)] = 1.0
    # Every candidate's inclusion frequency is q (binomial: std sqrt(q(1-q)/trials) ≈ 0.007).
    assert torch.allclose(taken.mean(0), torch.full((n,), q), atol=0.03)
    # Inclusions are uncorrelated across candidates, so the cohort size is Binomial(n, q).
    corr = torch.corrcoef(taken.T)
    assert float((corr - torch.eye(n)).abs().max()) < 0.08
    sizes = taken.sum(1)
    assert float(sizes.var()) == pytest.approx(n * q * (1 - q), rel=0.1)
    assert len(poisson_cohort(0, q, gen)) == 0
    with pytest.raises(ValueError, match="sample_rate"):
        poisson_cohort(5, 1.5, gen)


def test_poisson_denominator_is_fixed_and_may_be_exceeded():
    updates = torch.ones(7, 3)  # 7 clients answered, q·N = 4.5 expected
    out = dp_fedavg_aggregate(updates, 10.0, 0.0, 4.5, poisson=True)
    assert torch.allclose(out, torch.full((3,), 7 / 4.5))
    # An empty cohort releases the noise alone, with std σC/(qN).
    noise = dp_fedavg_aggregate(
        torch.zeros(0, 50_000), 2.0, 1.5, 4.5, torch.Generator().manual_seed(0), poisson=True
    )
    assert float(noise.double().std()) == pytest.approx(1.5 * 2.0 / 4.5, rel=0.02)
    with pytest.raises(ValueError, match="expected_clients must be a finite number > 0"):
        dp_fedavg_aggregate(updates, 1.0, 1.0, 0.0, poisson=True)


def poisson_dp(q: float, n: int, **kwargs) -> DPFedAvg:
    defaults = {"noise_multiplier": 0.0, "clip_norm": 100.0, "delta": DELTA}
    return DPFedAvg(
        fedavg(fraction_train=1.0),
        sampling_amplification=True,
        sample_rate=q,
        num_clients=n,
        trained_keys=TRAINED,
        **{**defaults, **kwargs},
    )


def test_poisson_rounds_sample_a_variable_cohort_and_divide_by_q_n():
    current = global_arrays()
    n, q = 30, 0.2
    strategy = poisson_dp(q, n)
    grid = FakeGrid(n)
    ones = {k: np.ones(current[k].shape) for k in TRAINED}
    sizes = []
    for rnd in range(1, 21):
        messages = list(strategy.configure_train(rnd, current, ConfigRecord(), grid))
        assert len({m.metadata.dst_node_id for m in messages}) == len(messages)
        sizes.append(len(messages))
        replies = [reply(m.metadata.dst_node_id, shifted(current, ones)) for m in messages]
        arrays, _ = strategy.aggregate_train(rnd, replies)
        # σ = 0: the release is Σ clip(1) / (qN) = cohort size / 6 on every coordinate.
        moved = flat_trained(arrays) - flat_trained(current)
        np.testing.assert_allclose(moved, len(messages) / (q * n), rtol=1e-5)
    assert len(set(sizes)) > 2  # the cohort size varies
    assert strategy.accountant.history == [(0.0, q, 20)]


def test_an_empty_poisson_cohort_still_releases_noise_and_is_accounted():
    current = global_arrays()
    strategy = poisson_dp(0.1, 10, noise_multiplier=1.0, clip_norm=1.0)
    list(strategy.configure_train(1, current, ConfigRecord(), FakeGrid(10)))
    arrays, metrics = strategy.aggregate_train(1, [])  # nobody sampled (or answered)
    assert arrays is not None
    assert not np.array_equal(flat_trained(arrays), flat_trained(current))
    assert strategy.accountant.history == [(1.0, 0.1, 1)] and metrics["epsilon"] > 0
    # Wrappers that skip reply-less rounds let this one through.
    wrapped = ValidatedUpdates(SeededSampling(poisson_dp(0.1, 10), 0, {}))
    list(wrapped.configure_train(1, current, ConfigRecord(), FakeGrid(10)))
    arrays, _ = wrapped.aggregate_train(1, [])
    assert arrays is not None and wrapped.inner.inner.accountant.num_steps == 1


def test_poisson_sampling_needs_its_parameters_and_a_full_inner_sample():
    with pytest.raises(ValueError, match="needs sample_rate q and num_clients N"):
        DPFedAvg(fedavg(fraction_train=1.0), noise_multiplier=1.0, clip_norm=1.0,
                 delta=DELTA, sampling_amplification=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"fraction_train=1\.0 \(got 0\.5\)"):
        DPFedAvg(fedavg(), noise_multiplier=1.0, clip_norm=1.0, delta=DELTA,
                 sampling_amplification=True, sample_rate=0.5, num_clients=10)  # fmt: skip
    with pytest.raises(ValueError, match="needs sampling_amplification=True"):
        DPFedAvg(fedavg(), noise_multiplier=1.0, clip_norm=1.0, delta=DELTA, sample_rate=0.5)
