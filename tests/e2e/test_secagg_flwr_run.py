"""End-to-end: secure aggregation on the real `flwr run` simulation runtime (Ray).

The masks cancel exactly in Z_2^64, so a secure run is deterministic even though every
silo draws fresh keys: the real runtime and the in-process grid agree bit for bit.
"""

import json

import pytest
import torch

from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid
from fl_app.local_run import run_simulation
from fl_app.sinks import is_runtime_metric

pytestmark = pytest.mark.e2e

OVERRIDES = {
    "task": "breast-cancer",
    "strategy": "fedadam",
    "num-server-rounds": 2,
    "training.local-epochs": 1,
    "sampling.fraction-evaluate": 0.0,
    "robust.max-update-norm-ratio": 0.0,
    "secagg.enabled": True,
}


def test_secure_aggregation_on_flwr_run_matches_the_in_process_grid(tmp_path):
    run = run_simulation(OVERRIDES, num_supernodes=4, run_dir=tmp_path / "flwr")
    assert run.ok, run.output[-3000:]
    train = run.final("train")
    assert train["secagg-survivors"] == 4 and train["secagg-dropouts"] == 0
    assert "secure aggregation over 4 nodes, threshold 3" in run.output
    weights = torch.load(run.run_dir / "model.pt")

    cfg = RunConfig.from_flower(
        {**RunConfig().to_flower(), **OVERRIDES, "output.run-dir": str(tmp_path / "inproc")}
    )
    _, out = run_federation(InProcessGrid(client_app, cfg.to_flower(), 4), cfg)
    again = torch.load(out / "model.pt")
    for key in weights:
        assert torch.equal(weights[key], again[key]), key

    # Same metrics too, except transport sizes and wall-clock times.
    def stable(rows):
        return [{k: v for k, v in r.items() if not is_runtime_metric(k)} for r in rows]

    assert stable(json.loads((out / "metrics.json").read_text())) == stable(run.metrics)
    assert run.final("server")["roc-auc"] > 0.8
