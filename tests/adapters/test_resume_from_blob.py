"""A run checkpointing to Azure Blob (Azurite) stops for lack of quorum and resumes from
the Blob checkpoint to the model of the uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from adapters.app import client_app  # the app as shipped: Blob checkpoints wired
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid
from fl_app.reliability import QuorumError

SETTINGS = {
    "task": "breast-cancer",
    "strategy": "fedadam",
    "num-server-rounds": 3,
    "training.local-epochs": 1,
    "seed": 5,
    "sampling.fraction-evaluate": 0.0,
    "sampling.min-evaluate-nodes": 0,
    "sampling.min-train-nodes": 3,
    "sampling.min-available-nodes": 3,
}


def _client_failing_in_round(failing_round: int):
    def client(msg, context):
        record = msg.content.config_records.get("config")
        pid = int(context.node_config["partition-id"])
        if record is not None and record.get("server-round") == failing_round and pid in (1, 3):
            raise RuntimeError("silo offline")
        return client_app(msg, context)

    return client


def test_a_run_resumes_from_its_blob_checkpoint(azurite_env, blob_container, tmp_path):
    url = azurite_env.url(blob_container, "fed/ckpt")
    cfg = RunConfig.from_flower(
        {**SETTINGS, "output.run-dir": str(tmp_path / "a"), "output.checkpoint-uri": url}
    )
    with pytest.raises(QuorumError, match=r"round 3: .*\(partition 1\)"):
        run_federation(InProcessGrid(_client_failing_in_round(3), cfg.to_flower(), 4), cfg)

    resumed = RunConfig.from_flower({**cfg.to_flower(), "output.resume": True})
    result, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), 4), resumed)
    assert sorted(result.train_metrics_clientapp) == [3]  # only the missing round ran

    clean = RunConfig.from_flower({**SETTINGS, "output.run-dir": str(tmp_path / "b")})
    _, clean_dir = run_federation(InProcessGrid(client_app, clean.to_flower(), 4), clean)
    ours, theirs = (torch.load(d / "model.pt", weights_only=True) for d in (run_dir, clean_dir))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
