"""The strategy registry, its wrappers and metric aggregation, on real Flower objects."""

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as fl

from fl_app.config import RunConfig
from fl_app.messages import train_reply as build_reply
from strategies import STRATEGIES, available_strategies, build_strategy
from strategies.metrics import weighted_mean_metrics
from strategies.wrappers import RoundReporter, SeededSampling, reply_order_key

FLOWER_STRATEGIES = {
    "fedavg": fl.FedAvg,
    "fedprox": fl.FedProx,
    "fedadam": fl.FedAdam,
    "fedyogi": fl.FedYogi,
    "fedadagrad": fl.FedAdagrad,
    "fedavgm": fl.FedAvgM,
    "fedmedian": fl.FedMedian,
    "fedtrimmedavg": fl.FedTrimmedAvg,
    "krum": fl.Krum,
    "multikrum": fl.MultiKrum,
    "bulyan": fl.Bulyan,
}


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def test_registry_holds_flowers_strategies():
    assert set(FLOWER_STRATEGIES) <= set(available_strategies())


@pytest.mark.parametrize("name", sorted(FLOWER_STRATEGIES))
def test_each_factory_builds_the_flower_class_configured_from_the_run_config(name):
    cfg = RunConfig(
        strategy=name,
        sampling={"fraction-train": 0.5, "min-train-nodes": 3, "min-available-nodes": 4},
        robust={"num-byzantine": 1, "trim-beta": 0.1},
        training={"proximal-mu": 0.3},
        server={"learning-rate": 0.2},
    )
    strategy = build_strategy(cfg)
    assert isinstance(strategy, FLOWER_STRATEGIES[name])
    assert strategy.fraction_train == 0.5 and strategy.min_train_nodes == 3
    expected = {
        "fedprox": ("proximal_mu", 0.3),
        "fedtrimmedavg": ("beta", 0.1),
        "krum": ("num_malicious_nodes", 1),
        "bulyan": ("num_malicious_nodes", 1),
        "fedadam": ("eta", 0.2),
        "fedavgm": ("server_learning_rate", 0.2),
    }
    if name in expected:
        attr, value = expected[name]
        assert getattr(strategy, attr) == value


def _reply(pid: int, node: int, value: float, n: int = 10, **metrics) -> Message:
    return build_reply(pid, node, {"w": np.full(3, value, dtype=np.float32)}, n, **metrics)


def test_replies_sort_by_partition_not_by_node_id():
    replies = [_reply(2, 5, 0.0), _reply(0, 9, 0.0), _reply(1, 1, 0.0)]
    assert [reply_order_key(r)[0] for r in sorted(replies, key=reply_order_key)] == [0, 1, 2]


def test_seeded_sampling_aggregates_the_same_whatever_the_arrival_order():
    rng = np.random.default_rng(0)
    values = rng.normal(size=7).astype(np.float32) * 1e3
    replies = [
        _reply(i, 100 + i, float(v), n=int(rng.integers(1, 50))) for i, v in enumerate(values)
    ]
    results = []
    for perm in (range(7), reversed(range(7)), [3, 1, 6, 0, 5, 2, 4]):
        strategy = SeededSampling(build_strategy(RunConfig()), seed=1, node_partitions={})
        arrays, _ = strategy.aggregate_train(1, [replies[i] for i in perm])
        results.append(arrays["w"].numpy().tobytes())
    assert len(set(results)) == 1


def test_round_reporter_reports_metrics_and_counts():
    seen = []
    strategy = RoundReporter(build_strategy(RunConfig()), lambda *a: seen.append(a))
    strategy.aggregate_train(
        4, [_reply(0, 1, 1.0, **{"train-loss": 0.5}), _reply(1, 2, 3.0, **{"train-loss": 1.5})]
    )
    ((server_round, phase, metrics),) = seen
    assert (server_round, phase) == (4, "train")
    assert metrics["train-loss"] == pytest.approx(1.0)
    assert metrics["replies"] == 2 and metrics["failures"] == 0


def test_metric_average_is_weighted_and_skips_nan_per_metric():
    records = [
        RecordDict({"m": MetricRecord({"num-examples": 30, "acc": 0.5, "roc-auc": float("nan")})}),
        RecordDict({"m": MetricRecord({"num-examples": 10, "acc": 0.9, "roc-auc": 0.8})}),
    ]
    out = weighted_mean_metrics(records, "num-examples")
    assert out["acc"] == pytest.approx((30 * 0.5 + 10 * 0.9) / 40)
    assert out["roc-auc"] == pytest.approx(0.8)
    assert out["num-examples"] == 40
    nan_only = weighted_mean_metrics(records[:1], "num-examples")
    assert "roc-auc" not in nan_only and nan_only["acc"] == pytest.approx(0.5)


def test_registry_maps_names_to_factories_with_metadata():
    assert all(callable(f) for f in STRATEGIES.mapping().values())
    assert set(STRATEGIES.names(family="mean-based")) == {
        "fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm"
    }  # fmt: skip
    for feature in ("central-dp", "secagg"):
        assert STRATEGIES.names(compatible=feature) == STRATEGIES.names(family="mean-based")
    # q-FedAvg's step is linear in the updates (top-k fine) but reweights them by loss.
    mean_based = STRATEGIES.names(family="mean-based")
    assert STRATEGIES.names(compatible="topk") == [*mean_based, "qfedavg"]
    assert STRATEGIES.names(family="fairness") == ["qfedavg"]
    assert STRATEGIES.get("qfedavg").extra["needs_loss_before"] is True
    assert STRATEGIES.get("fltrust").extra["needs_server_update"] is True
    with pytest.raises(KeyError, match="Choose one of"):
        build_strategy(RunConfig.model_construct(strategy="nope"))
