"""Per-silo evaluation and fairness-oriented aggregation in real runs (the ServerApp body
and ClientApp on the in-process grid), and q-FedAvg's wiring: the loss it weighs by,
the direction it moves, the features it refuses."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message

from fl_app.client_app import app as client_app
from fl_app.config import ConfigError, RunConfig
from fl_app.federation import run_federation, train_config
from fl_app.inprocess import InProcessGrid
from fl_app.messages import train_reply
from fl_core.records import LOSS_BEFORE_KEY, REPORT_LOSS_BEFORE_KEY
from strategies import build_strategy
from tasks import get_task


def test_qfedavg_run_learns_and_reports_the_silos_fairness(tmp_path):
    cfg = RunConfig.from_flower(
        {
            "task": "digits",
            "strategy": "qfedavg",
            "server.q": 0.1,
            "num-server-rounds": 3,
            "training.local-epochs": 1,
            "data.partitioner": "dirichlet",
            "data.dirichlet-alpha": 0.3,
            "sampling.min-available-nodes": 5,
            "sampling.fraction-evaluate": 0.6,  # 3 of the 5 silos evaluate each round
            "output.run-dir": str(tmp_path),
        }
    )
    _, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), 5), cfg)
    rows = json.loads((run_dir / "metrics.json").read_text())
    silo_rows = json.loads((run_dir / "silo_metrics.json").read_text())

    server = {r["round"]: r["accuracy"] for r in rows if r["phase"] == "server"}
    assert server[3] > server[0] + 0.2, server  # learns (10 classes: chance is 0.1)
    # Every silo reported the received model's loss before training (q-FedAvg's F_k).
    trained = [r for r in silo_rows if r["phase"] == "train"]
    assert len(trained) == 3 * 5
    assert all(r[LOSS_BEFORE_KEY] > 0 and math.isfinite(r[LOSS_BEFORE_KEY]) for r in trained)

    evaluate = [r for r in rows if r["phase"] == "evaluate"]
    assert [r["round"] for r in evaluate] == [1, 2, 3]
    for row in evaluate:
        acc = [r["accuracy"] for r in silo_rows
               if r["phase"] == "evaluate" and r["round"] == row["round"]]  # fmt: skip
        assert len(acc) == row["silo-accuracy-silos"] == row["replies"] == 3
        assert row["silo-accuracy-min"] == pytest.approx(min(acc))
        assert row["silo-accuracy-median"] == pytest.approx(statistics.median(acc))
        assert row["silo-accuracy-p10"] == pytest.approx(np.percentile(acc, 10))
        assert row["silo-accuracy-std"] == pytest.approx(statistics.pstdev(acc))
        assert row["silo-accuracy-jain"] == pytest.approx(
            sum(acc) ** 2 / (len(acc) * sum(a * a for a in acc))
        )
    # The summary is only in the evaluate rows.
    assert not any(k.startswith("silo-") for r in rows if r["phase"] != "evaluate" for k in r)


def _reply(pid: int, w: float, loss: float) -> Message:
    arrays = {"w": np.array([w], dtype=np.float32)}
    return train_reply(pid, pid + 1, arrays, 10, **{LOSS_BEFORE_KEY: loss, "train-loss": 0.1})


def _step(q: float) -> float:
    """q-FedAvg's new global weight from 0 with two silos: one stepping to +1 with loss 4,
    the other to −1 with loss 1."""
    strategy = build_strategy(RunConfig(strategy="qfedavg", server={"q": q}))
    strategy.current_arrays = ArrayRecord({"w": Array(np.zeros(1, dtype=np.float32))})
    arrays, metrics = strategy.aggregate_train(1, [_reply(0, 1.0, 4.0), _reply(1, -1.0, 1.0)])
    assert metrics[LOSS_BEFORE_KEY] == pytest.approx(2.5)
    return float(arrays["w"].numpy()[0])


def test_qfedavg_weighs_the_worse_served_silo_by_the_loss_it_reports():
    assert _step(0.0) == pytest.approx(0.0, abs=1e-6)  # q = 0: the plain mean of the updates
    assert _step(1.0) > 0.05  # q > 0: towards the silo with the higher loss


def test_only_a_strategy_that_needs_it_asks_for_the_loss_before_training():
    assert REPORT_LOSS_BEFORE_KEY not in train_config(RunConfig(), "lineage")
    assert train_config(RunConfig(strategy="qfedavg"), "lineage")[REPORT_LOSS_BEFORE_KEY] is True


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"dp": {"local": True}}, "'dp.local'"),
        ({"dp": {"central": True}, "robust": {"max_update_norm_ratio": 0.0}}, "'dp.central'"),
        ({"secagg": {"enabled": True}, "robust": {"max_update_norm_ratio": 0.0}},
         "'secagg.enabled'"),
    ],
)  # fmt: skip
def test_qfedavg_refuses_features_it_breaks(overrides, key):
    with pytest.raises(ConfigError, match=key):
        RunConfig(strategy="qfedavg", **overrides)


def test_every_tasks_main_metric_is_one_it_reports():
    for name in ("digits", "breast-cancer", "fraud", "ner"):
        task = get_task(name)
        data = task.load_partition(0, 4, RunConfig().data, 0).val
        assert task.main_metric in task.evaluate(task.build_model(), data), name
    assert get_task("ner").main_metric == "entity-f1"
    assert get_task("fraud").main_metric == "balanced-accuracy"


def test_every_tasks_recommended_run_config_is_a_valid_one():
    from tasks import available_tasks

    for name in available_tasks():
        recommended = dict(get_task(name).recommended)
        cfg = RunConfig.from_flower({"task": name, **recommended})
        flat = cfg.to_flower()
        assert all(flat[k] == v for k, v in recommended.items()), name
    assert get_task("ner").recommended["training.learning-rate"] == 0.2
    assert get_task("ner").recommended["strategy"] == "fedavgm"
