"""The server side of secure aggregation with real Messages: the real SecureAggregation
around the app's FedAvg, the real silo handlers and masking mod in a ClientApp on the
in-process grid; only training is a stand-in that returns chosen updates and metrics.

Metrics are combined exactly as without secure aggregation: ``dp-epsilon`` is the maximum
over silos, a silo's NaN/Inf is reported for that silo and left out of the round's value.
"""

import logging
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_app.config import RunConfig
from fl_app.inprocess import InProcessGrid
from fl_core.records import META_KEY
from strategies import build_strategy
from strategies.secagg import SecureAggregation
from strategies.secagg import protocol as P
from strategies.secagg.client import (
    CONFIG_KEY,
    MASKED_KEY,
    STATE_KEY,
    UNMASK,
    register,
    secagg_mod,
)
from strategies.wrappers import RoundReporter

NODES = 4
FIRST = 1001
SIZE = 300
CFG = RunConfig(
    sampling={"min-train-nodes": NODES, "min-available-nodes": NODES, "fraction-evaluate": 0.0}
)
# Per partition: the update it trains and the metrics it reports (num-examples weights).
UPDATES = [np.random.default_rng(p).uniform(-1, 1, SIZE).astype(np.float32) for p in range(4)]
METRICS = [
    {"num-examples": 30, "dp-epsilon": 0.5, "train-loss": 0.4, "roc-auc": 0.9},
    {"num-examples": 10, "dp-epsilon": 2.0, "train-loss": 0.8, "roc-auc": 0.7},
    {"num-examples": 25, "dp-epsilon": 1.0, "train-loss": float("nan"), "roc-auc": float("inf")},
    {"num-examples": 5, "dp-epsilon": 0.7, "train-loss": 0.2, "roc-auc": 0.6},
]


def _client_app(metrics=METRICS) -> ClientApp:
    app = ClientApp()
    register(app)

    @app.train(mods=[secagg_mod])
    def train(msg: Message, context) -> Message:
        pid = int(context.node_config["partition-id"])
        trained = msg.content["arrays"]["w"].numpy() + UPDATES[pid]
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(trained)}),
                "metrics": MetricRecord(metrics[pid]),
                META_KEY: ConfigRecord({"partition-id": pid}),
            }
        )
        return Message(content, reply_to=msg)

    return app


class Grid(InProcessGrid):
    """Counts the message types it delivers."""

    def __init__(self, app):
        super().__init__(app, {}, NODES, first_node_id=FIRST)
        self.delivered: list[str] = []

    def _deliver(self, msg):
        self.delivered.append(msg.metadata.message_type)
        return super()._deliver(msg)


def _round(secure: bool, app=None, tamper=None):
    """One train round through RoundReporter(+ SecureAggregation)(FedAvg)."""
    grid = Grid(app or _client_app())
    silo_rows, round_rows = [], []
    inner = build_strategy(CFG)
    if secure:
        inner = SecureAggregation(inner, threshold=0.6, clip_range=4.0, bits=24)
    strategy = RoundReporter(inner, lambda *a: round_rows.append(a), lambda *a: silo_rows.append(a))
    initial = ArrayRecord({"w": Array(np.zeros(SIZE, dtype=np.float32))})
    messages = strategy.configure_train(1, initial, ConfigRecord(), grid)
    replies = list(grid.send_and_receive(messages))
    if tamper is not None:
        tamper(replies)
    arrays, metrics = strategy.aggregate_train(1, replies)
    return grid, arrays, metrics, {pid: m for _, _, pid, m in silo_rows}


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg"])
def test_epsilon_is_the_max_and_a_non_finite_metric_does_not_poison_the_round(
    flower_identity, caplog, secure
):
    caplog.set_level(logging.WARNING)
    _, arrays, metrics, silos = _round(secure)
    assert metrics.get("secagg-survivors") == (NODES if secure else None)
    assert metrics["dp-epsilon"] == max(m["dp-epsilon"] for m in METRICS) == 2.0
    finite = [m for m in METRICS if math.isfinite(m["train-loss"])]
    expected_loss = sum(m["num-examples"] * m["train-loss"] for m in finite) / sum(
        m["num-examples"] for m in finite
    )
    assert metrics["train-loss"] == pytest.approx(expected_loss)
    assert math.isfinite(metrics["roc-auc"]) and 0.6 <= metrics["roc-auc"] <= 0.9
    assert metrics["num-examples"] == sum(m["num-examples"] for m in METRICS)
    # The silo's own values reach its per-silo metrics unchanged.
    assert math.isnan(silos[2]["train-loss"]) and silos[2]["roc-auc"] == math.inf
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 1 and "partition 2" in warnings[0] and "train-loss=nan" in warnings[0]
    mean = sum(m["num-examples"] * u for m, u in zip(METRICS, UPDATES, strict=True)) / 70
    bound = 0.0 if not secure else P.quantization_error_bound(4.0, 24)
    assert np.abs(arrays["w"].numpy() - mean).max() <= bound + 1e-6


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg"])
def test_an_unknown_epsilon_counts_as_unbounded_and_all_nan_keys_are_left_out(
    flower_identity, secure
):
    sigmas = [1.1, 0.9, 1.3, 1.0]
    metrics = [
        dict(m, **{"roc-auc": float("nan"), "dp-noise-multiplier": s})
        for m, s in zip(METRICS, sigmas, strict=True)
    ]
    metrics[1]["dp-epsilon"] = float("nan")
    _, _, out, silos = _round(secure, app=_client_app(metrics))
    assert out["dp-epsilon"] == math.inf  # not max(0.5, 1.0, 0.7): that would overstate
    assert out["dp-noise-multiplier"] == min(sigmas)  # the weakest silo's noise
    assert "roc-auc" not in out
    assert math.isnan(silos[1]["dp-epsilon"])


def test_a_round_with_zero_total_weight_is_skipped_before_any_share_is_revealed(
    flower_identity, caplog
):
    caplog.set_level(logging.WARNING)
    app = _client_app([dict(m, **{"num-examples": 0}) for m in METRICS])
    grid, arrays, metrics, _ = _round(True, app=app)
    assert arrays is None and metrics["secagg-survivors"] == NODES
    assert any("sum to 0" in r.getMessage() for r in caplog.records)
    assert UNMASK not in grid.delivered
    stages = {c.state.config_records[STATE_KEY]["stage"] for c in grid.contexts.values()}
    assert stages == {"masked"}  # every silo still holds its secrets


def _corrupt(kind):
    """A tamper function corrupting partition 3's masked reply in one way."""

    def tamper(replies):
        content = next(r for r in replies if r.metadata.src_node_id == FIRST + 3).content
        vector = content[MASKED_KEY][MASKED_KEY].numpy()
        if kind == "truncated":
            content[MASKED_KEY] = ArrayRecord({MASKED_KEY: Array(vector[:-1].copy())})
        elif kind == "float-dtype":
            content[MASKED_KEY] = ArrayRecord({MASKED_KEY: Array(vector.astype(np.float64))})
        elif kind == "extra-array":
            content[MASKED_KEY]["other"] = Array(vector.copy())
        elif kind == "forged-bytes":
            content[MASKED_KEY][MASKED_KEY] = Array(
                dtype="uint64", shape=(SIZE,), stype="numpy.ndarray", data=b"\x01" * 7
            )
        elif kind == "no-weight":
            del content[CONFIG_KEY]
        elif kind in ("negative-weight", "float-weight", "bool-weight"):
            value = {"negative-weight": -5, "float-weight": 2.5, "bool-weight": True}[kind]
            content[CONFIG_KEY]["weight"] = value
        elif kind == "two-metric-records":
            content["metrics-2"] = MetricRecord({"num-examples": 1})

    return tamper


@pytest.mark.parametrize(
    "kind",
    [
        "truncated", "float-dtype", "extra-array", "forged-bytes", "no-weight",
        "negative-weight", "float-weight", "bool-weight", "two-metric-records",
    ],
)  # fmt: skip
def test_a_malformed_masked_reply_is_treated_as_a_dropout(flower_identity, caplog, kind):
    caplog.set_level(logging.WARNING)
    _, arrays, metrics, _ = _round(True, tamper=_corrupt(kind))
    assert metrics["secagg-survivors"] == 3 and metrics["secagg-dropouts"] == 1
    weights = [m["num-examples"] for m in METRICS[:3]]
    mean = sum(w * u for w, u in zip(weights, UPDATES[:3], strict=True)) / sum(weights)
    assert np.abs(arrays["w"].numpy() - mean).max() <= P.quantization_error_bound(4.0, 24) + 1e-6
    assert metrics["num-examples"] == sum(weights)
    assert any(
        "node 1004 (partition 3)" in r.getMessage() and "malformed" in r.getMessage()
        for r in caplog.records
    )
