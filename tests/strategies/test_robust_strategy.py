"""Robust strategies, update validation and attack simulation on real Flower Messages,
and whole federations under attack on the in-process grid."""

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid
from fl_app.messages import train_reply as build_reply
from strategies import build_strategy
from strategies.flatten import stack, unflatten
from strategies.robust import coordinate_median
from strategies.robust.simulation import SimulatedAttack, byzantine_partitions
from strategies.validation import check_reply, filter_replies
from strategies.wrappers import ValidatedUpdates

GLOBAL = {"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def _global() -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})


def _model(value: float, rng=None) -> dict[str, np.ndarray]:
    noise = (lambda s: rng.normal(scale=0.01, size=s)) if rng is not None else np.zeros
    return {k: (v + value + noise(v.shape)).astype(np.float32) for k, v in GLOBAL.items()}


def test_flatten_round_trips_keys_shapes_and_dtypes():
    record = ArrayRecord(
        {
            "a": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
            "n": Array(np.array([7], dtype=np.int64)),
        }
    )
    matrix, layout = stack([record, record])
    assert matrix.shape == (2, 7) and layout.size == 7
    back = unflatten(matrix[1], layout)
    assert back["n"].dtype == "int64" and back["n"].numpy().tolist() == [7]
    np.testing.assert_array_equal(back["a"].numpy(), record["a"].numpy())


def test_robust_median_strategy_equals_the_pure_function_on_the_models():
    rng = np.random.default_rng(0)
    replies = [
        build_reply(i, 10 + i, _model(float(v), rng))
        for i, v in enumerate([0.1, 0.2, 0.3, 50.0, -40.0])
    ]
    strategy = build_strategy(RunConfig(strategy="robust-median"))
    strategy.round.begin(1, "train", _global())
    arrays, metrics = strategy.aggregate_train(1, replies)
    matrix, layout = stack([r.content["arrays"] for r in replies])
    expected = unflatten(coordinate_median(matrix), layout)
    for key in GLOBAL:
        np.testing.assert_allclose(arrays[key].numpy(), expected[key].numpy(), atol=1e-6)
    assert metrics["num-examples"] == 50


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda a: a.update(w=np.full((2, 3), np.nan, dtype=np.float32)), "NaN or Inf"),
        (lambda a: a.update(b=np.array([np.inf, 0], dtype=np.float32)), "NaN or Inf"),
        (lambda a: a.update(w=np.zeros((3, 2), dtype=np.float32)), "has shape (3, 2)"),
        (lambda a: a.update(b=np.zeros(2, dtype=np.float64)), "has dtype float64"),
        (lambda a: a.pop("b"), "missing ['b']"),
        (lambda a: a.update(extra=np.zeros(1, dtype=np.float32)), "unexpected ['extra']"),
    ],
)
def test_malformed_updates_are_named(corrupt, reason):
    arrays = _model(0.1)
    corrupt(arrays)
    assert reason in check_reply(build_reply(0, 1, arrays), _global())


def test_bad_example_counts_are_rejected():
    for bad in (-1.0, float("nan"), float("inf")):
        assert "'num-examples'" in check_reply(build_reply(0, 1, _model(0.1), bad), _global())


def test_validation_keeps_the_round_going_and_counts_rejections(caplog):
    replies = [build_reply(i, 10 + i, _model(0.1 * (i + 1))) for i in range(4)]
    replies.append(build_reply(4, 14, {**_model(0.1), "w": np.full((2, 3), np.nan, "float32")}))
    replies.append(build_reply(5, 15, _model(1e4)))  # norm far outside the cohort
    seen = []
    strategy = ValidatedUpdates(
        build_strategy(RunConfig()), max_norm_ratio=10.0, on_reject=lambda r, rej: seen.append(rej)
    )
    strategy.round.begin(3, "train", _global())
    with caplog.at_level(logging.WARNING):
        arrays, metrics = strategy.aggregate_train(3, replies)
    assert metrics["rejected-updates"] == 2
    assert sorted(r.partition_id for r in seen) == [4, 5]
    assert "node 14 (partition 4): array 'w' contains NaN or Inf" in caplog.text
    assert np.isfinite(arrays["w"].numpy()).all()
    np.testing.assert_allclose(arrays["b"].numpy(), 0.25, rtol=1e-5)  # mean of 0.1..0.4


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(["w", "b"]),
    kind=st.sampled_from(["value", "shape", "dtype", "drop", "ok"]),
    value=st.sampled_from([np.nan, np.inf, -np.inf, 1e30]),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    dtype=st.sampled_from([np.float16, np.float64, np.int32, np.int64]),
)
def test_fuzzed_replies_never_crash_and_are_rejected_iff_malformed(key, kind, value, shape, dtype):
    arrays = _model(0.1)
    if kind == "value":
        arrays[key] = arrays[key].copy()
        arrays[key].flat[0] = value
    elif kind == "shape":
        arrays[key] = np.zeros(shape, dtype=np.float32)
    elif kind == "dtype":
        arrays[key] = arrays[key].astype(dtype)
    elif kind == "drop":
        arrays.pop(key)
    bad = build_reply(1, 2, arrays)
    accepted, rejected = filter_replies([build_reply(0, 1, _model(0.2)), bad], _global())
    malformed = (
        (kind == "value" and not np.isfinite(value))
        or (kind == "shape" and tuple(shape) != GLOBAL[key].shape)
        or kind in ("dtype", "drop")
    )
    assert len(rejected) == int(malformed)
    assert len(accepted) == 2 - int(malformed)


def test_byzantine_set_is_seeded_and_sized():
    a = byzantine_partitions(20, 0.2, seed=1)
    assert len(a) == 4 and a == byzantine_partitions(20, 0.2, seed=1)
    assert a != byzantine_partitions(20, 0.2, seed=2)


def _capturing(seen: list):
    """A ValidatedUpdates whose aggregation records the replies it is given in ``seen``."""

    class Capture(ValidatedUpdates):
        def aggregate_train(self, server_round, replies):
            seen.extend(replies)
            return None, None

    return Capture


def test_simulated_sign_flip_replaces_only_byzantine_updates():
    replies = [build_reply(i, 10 + i, _model(1.0)) for i in range(5)]
    inner_seen = []
    Capture = _capturing(inner_seen)

    attack = SimulatedAttack(Capture(build_strategy(RunConfig())), "sign-flip", frozenset({1, 3}))
    attack.round.begin(1, "train", _global())
    attack.aggregate_train(1, replies)
    values = {
        int(r.content["meta"]["partition-id"]): float(r.content["arrays"]["b"].numpy()[0])
        for r in inner_seen
    }
    assert values == {0: 1.0, 1: -1.0, 2: 1.0, 3: -1.0, 4: 1.0}


def test_simulated_weight_inflation_flips_updates_and_inflates_only_byzantine_claims():
    replies = [build_reply(i, 10 + i, _model(1.0), num_examples=70 + i) for i in range(5)]
    inner_seen = []
    Capture = _capturing(inner_seen)

    for strength, factor in ((0.0, 1000), (50.0, 50)):
        inner_seen.clear()
        fresh = [build_reply(i, 10 + i, _model(1.0), num_examples=70 + i) for i in range(5)]
        attack = SimulatedAttack(
            Capture(build_strategy(RunConfig())),
            "weight-inflation",
            frozenset({1, 3}),
            strength=strength,
        )
        attack.round.begin(1, "train", _global())
        attack.aggregate_train(1, fresh)
        seen = {int(r.content["meta"]["partition-id"]): r for r in inner_seen}
        values = {p: float(r.content["arrays"]["b"].numpy()[0]) for p, r in seen.items()}
        claims = {p: r.content["metrics"]["num-examples"] for p, r in seen.items()}
        assert values == {0: 1.0, 1: -1.0, 2: 1.0, 3: -1.0, 4: 1.0}  # sign-flip vectors
        assert claims == {0: 70, 1: 71 * factor, 2: 72, 3: 73 * factor, 4: 74}
    assert replies[1].content["metrics"]["num-examples"] == 71  # other messages untouched


def test_simulated_attacks_craft_only_from_finite_honest_updates():
    """A diverged honest silo (NaN update, rejected by validation later) must not turn the
    crafted Byzantine updates into NaN."""
    replies = [build_reply(i, 10 + i, _model(1.0)) for i in range(4)]
    replies.append(build_reply(4, 14, _model(float("nan"))))
    inner_seen = []
    Capture = _capturing(inner_seen)

    attack = SimulatedAttack(Capture(build_strategy(RunConfig())), "sign-flip", frozenset({1, 3}))
    attack.round.begin(1, "train", _global())
    attack.aggregate_train(1, replies)
    values = {
        int(r.content["meta"]["partition-id"]): float(r.content["arrays"]["b"].numpy()[0])
        for r in inner_seen
    }
    assert values[1] == values[3] == -1.0  # −mean of the finite honest updates (all 1.0)
    assert np.isnan(values[4])  # left for validation to reject


def test_weight_inflation_refuses_a_negative_factor_naming_the_key():
    with pytest.raises(ValueError, match=r"'attack.strength' = -3\.0"):
        SimulatedAttack(
            build_strategy(RunConfig()), "weight-inflation", frozenset({1}), strength=-3.0
        )


def _federate(**overrides):
    cfg = RunConfig.from_flower({**RunConfig().to_flower(), **overrides})
    grid = InProcessGrid(client_app, cfg.to_flower(), 10)
    result, _ = run_federation(grid, cfg)
    return result.evaluate_metrics_serverapp[cfg.num_server_rounds]["accuracy"]


def test_under_attack_fedavg_collapses_and_robust_rules_hold(tmp_path):
    """10 digits silos, 3 of them sending sign-flipped updates (scaled by 3 so FedAvg's
    mean points the wrong way), 3 rounds, on the in-process grid."""
    common = {
        "num-server-rounds": 3,
        "output.run-dir": str(tmp_path),
        "attack.kind": "scaling",
        "attack.strength": -3.0,
        "attack.fraction": 0.3,
        "robust.num-byzantine": 3,
        "robust.max-update-norm-ratio": 0.0,
    }
    clean = _federate(**{**common, "attack.kind": "none"})
    fedavg = _federate(**common)
    median = _federate(**common, strategy="robust-median")
    cclip = _federate(**common, strategy="cclip", **{"robust.pre-aggregator": "nnm"})
    assert clean > 0.8
    assert fedavg < 0.3
    assert median > clean - 0.15
    assert cclip > clean - 0.15


def test_weight_inflation_sinks_fedavg_but_the_median_ignores_the_claims(tmp_path):
    """3 of 10 digits silos send sign-flipped updates claiming 1 000 × their examples:
    FedAvg (weighted by the claims) collapses; the median, which ignores the claims,
    reaches exactly the accuracy it reaches under plain sign-flip (same vectors, honest
    claims)."""
    common = {
        "num-server-rounds": 3,
        "output.run-dir": str(tmp_path),
        "attack.fraction": 0.3,
        "robust.num-byzantine": 3,
        "robust.max-update-norm-ratio": 0.0,
    }
    fedavg = _federate(**common, **{"attack.kind": "weight-inflation"})
    median = _federate(**common, **{"attack.kind": "weight-inflation"}, strategy="robust-median")
    flipped = _federate(**common, **{"attack.kind": "sign-flip"}, strategy="robust-median")
    assert fedavg < 0.3
    assert median > 0.8
    assert median == flipped


def test_norm_validation_alone_stops_a_scaling_attack(tmp_path):
    acc = _federate(
        **{
            "num-server-rounds": 3,
            "output.run-dir": str(tmp_path),
            "attack.kind": "scaling",
            "attack.strength": 100.0,
            "attack.fraction": 0.2,
        }
    )
    assert acc > 0.8


def test_clipping_scales_an_outsized_update_to_the_bound_and_drops_no_one(caplog):
    """``outliers="clip"``: the update 10⁵ × the others is kept, its delta scaled to exactly
    3 × the cohort's median norm (its direction unchanged); the NaN reply is still rejected."""
    replies = [build_reply(i, 10 + i, _model(0.1 * (i + 1))) for i in range(4)]
    replies.append(build_reply(4, 14, {**_model(0.1), "w": np.full((2, 3), np.nan, "float32")}))
    replies.append(build_reply(5, 15, _model(1e4)))
    rejected, clipped = [], []
    strategy = ValidatedUpdates(
        build_strategy(RunConfig()), max_norm_ratio=3.0, outliers="clip",
        on_reject=lambda r, e: rejected.append(e), on_clip=lambda r, e: clipped.append(e),
    )  # fmt: skip
    strategy.round.begin(3, "train", _global())
    with caplog.at_level(logging.WARNING):
        arrays, metrics = strategy.aggregate_train(3, replies)
    assert (metrics["rejected-updates"], metrics["clipped-updates"]) == (1, 1)
    assert [e.partition_id for e in rejected] == [4] and [e.partition_id for e in clipped] == [5]
    assert "clipped update of node 15 (partition 5)" in caplog.text
    # Deltas 0.1 … 0.4 and 10⁴ on every parameter: the median of the 5 norms is 0.3 · √d.
    d = sum(v.size for v in GLOBAL.values())
    bound = 3.0 * 0.3 * np.sqrt(d)
    (kept,) = [m for m in replies if m.metadata.src_node_id == 15]
    delta = np.concatenate(
        [(kept.content["arrays"][k].numpy() - v).ravel() for k, v in GLOBAL.items()]
    )  # fmt: skip
    assert np.linalg.norm(delta) == pytest.approx(bound, rel=1e-5)
    np.testing.assert_allclose(delta, 0.9, rtol=1e-5)  # same direction, 3 × 0.3
    # FedAvg (equal claims) of 0.1, 0.2, 0.3, 0.4 and the clipped 0.9:
    np.testing.assert_allclose(arrays["w"].numpy(), 0.38, rtol=1e-5)


def test_default_clipping_defuses_a_boosted_update_the_reject_filter_let_through(tmp_path):
    """Scaling ×10 (3 of 10 silos send 10 × the honest mean): its norm is 4–9 × the cohort
    median, under the old default reject bar of 10 ×, which therefore changes nothing; the
    default (clip at 3 ×) keeps the run learning."""
    common = {
        "num-server-rounds": 3,
        "output.run-dir": str(tmp_path),
        "attack.kind": "scaling",
        "attack.strength": 10.0,
        "attack.fraction": 0.3,
    }
    unbounded = _federate(**common, **{"robust.max-update-norm-ratio": 0.0})
    old_default = _federate(
        **common, **{"robust.max-update-norm-ratio": 10.0, "robust.norm-outliers": "reject"}
    )
    default = _federate(**common)
    assert old_default == unbounded < 0.7  # measured 0.54: the reject bar let all through
    assert default > 0.85  # measured 0.94 (clean: 0.96)


def test_replies_with_extra_or_missing_metrics_are_dropped_not_fatal():
    replies = [build_reply(i, 10 + i, _model(0.1), **{"train-loss": 0.5}) for i in range(3)]
    replies.append(build_reply(3, 13, _model(0.1), **{"train-loss": 0.5, "sneaky": 1.0}))
    strategy = ValidatedUpdates(build_strategy(RunConfig()))
    strategy.round.begin(1, "train", _global())
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics["rejected-updates"] == 1


def test_evaluation_of_a_silo_without_validation_rows_keeps_the_round(make_reply):
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    def eval_reply(pid, metrics):
        content = RecordDict(
            {"metrics": MetricRecord(metrics), "meta": ConfigRecord({"partition-id": pid})}
        )
        return Message(
            content, reply_to=Message(RecordDict(), dst_node_id=20 + pid, message_type="evaluate")
        )

    nan = float("nan")
    replies = [
        eval_reply(0, {"num-examples": 10, "accuracy": 0.8}),
        eval_reply(1, {"num-examples": 0, "accuracy": nan}),  # empty validation split
        eval_reply(2, {"num-examples": 30, "accuracy": 0.4}),
        eval_reply(3, {"num-examples": 5}),  # malformed: missing a metric
    ]
    metrics = ValidatedUpdates(build_strategy(RunConfig())).aggregate_evaluate(1, replies)
    assert metrics["accuracy"] == pytest.approx((10 * 0.8 + 30 * 0.4) / 40)


def test_trimmed_mean_behind_nnm_builds_and_aggregates():
    strategy = build_strategy(
        RunConfig(
            strategy="robust-trimmed-mean", robust={"pre-aggregator": "nnm", "num-byzantine": 1}
        )
    )
    strategy.round.begin(1, "train", _global())
    replies = [build_reply(i, 10 + i, _model(0.1 * i)) for i in range(5)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert np.isfinite(arrays["w"].numpy()).all()
