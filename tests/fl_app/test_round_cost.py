"""Per-round cost: the round wall time the app logs, and cuts that must not change the
model (one model object per task reused by the ClientApp; numpy F1; IID partitions and
feature moments without flwr-datasets or a model)."""

from __future__ import annotations

import json

import torch

from benchmarks.overhead_worker import audit_round_seconds
from fl_app import client_app as client_module
from fl_app.config import RunConfig
from fl_app.federation import roll_call, run_federation
from fl_app.inprocess import InProcessGrid
from fl_app.sinks import is_runtime_metric
from tasks import get_task

SETTINGS = {
    "task": "breast-cancer",
    "strategy": "fedprox",
    "num-server-rounds": 2,
    "training.local-epochs": 1,
    "data.partitioner": "dirichlet",
    "sampling.min-available-nodes": 3,
    "sampling.min-train-nodes": 3,
    "seed": 5,
}


def _run(tmp_path, name):
    cfg = RunConfig.from_flower({**SETTINGS, "output.run-dir": str(tmp_path / name)})
    _, run_dir = run_federation(InProcessGrid(client_module.app, cfg.to_flower(), 3), cfg)
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def test_round_seconds_is_the_rounds_wall_time_and_the_reused_model_changes_nothing(
    tmp_path, monkeypatch
):
    run_dir, metrics = _run(tmp_path, "reused")
    server = {m["round"]: m for m in metrics if m["phase"] == "server"}
    assert sorted(server) == [0, 1, 2] and "round-seconds" not in server[0]
    phases = {(m["round"], m["phase"]): m for m in metrics}
    audited = audit_round_seconds(run_dir / "audit.jsonl")
    assert len(audited) == 2
    for rnd in (1, 2):
        seconds = server[rnd]["round-seconds"]
        # The round contains both silo phases (and aggregation, evaluation, checkpoint) …
        silo = (
            phases[(rnd, "train")]["train-seconds"] + phases[(rnd, "evaluate")]["evaluate-seconds"]
        )
        assert seconds > silo > 0
        # … and is what the audit log's per-round checkpoint entries span (the two clocks
        # are read a file write apart).
        assert abs(seconds - audited[rnd - 1]) < 2.0
    assert client_module._MODELS.get("breast-cancer") is not None  # the model was reused

    # A fresh model per message (as before the cut) gives the same weights and metrics.
    monkeypatch.setattr(client_module, "_model", lambda task, cfg: task.build_model())
    fresh_dir, fresh_metrics = _run(tmp_path, "fresh")
    reused, fresh = torch.load(run_dir / "model.pt"), torch.load(fresh_dir / "model.pt")
    assert reused.keys() == fresh.keys()
    assert all(torch.equal(reused[k], fresh[k]) for k in reused)

    def model_metrics(rows):
        return [{k: v for k, v in r.items() if not is_runtime_metric(k)} for r in rows]

    assert model_metrics(metrics) == model_metrics(fresh_metrics)


def test_roll_call_moments_equal_the_moments_of_each_silos_training_rows():
    cfg = RunConfig(task="fraud", sampling={"min-available-nodes": 6}, data={"partitioner": "iid"})
    task = get_task("fraud")
    roster, moments = roll_call(InProcessGrid(client_module.app, cfg.to_flower(), 6), cfg)
    assert sorted(roster.values()) == list(range(6)) and len(moments) == 6
    by_count = sorted(moments, key=lambda m: m["sum"][0])
    expected = sorted(
        (
            task.load_partition(pid, 6, cfg.data, cfg.seed).train.x.astype("float64")
            for pid in range(6)
        ),
        key=lambda x: x.sum(axis=0)[0],
    )
    for got, x in zip(by_count, expected, strict=True):
        assert got["count"] == [float(len(x))]
        assert got["sum"] == x.sum(axis=0).tolist()
        assert got["sumsq"] == (x**2).sum(axis=0).tolist()
    assert task.standardizes_inputs() and not get_task("digits").standardizes_inputs()
