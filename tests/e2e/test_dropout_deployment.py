"""A silo dies mid-round on the real deployment runtime, under secure aggregation, and
the federation goes on.

flower-superlink + 4 flower-supernode + ``flwr run`` on loopback (tests/e2e/conftest.py:
the processes the local backend, adapters/local/run.py, starts). Right after the
secure-aggregation key and share steps of round 1, one SuperNode is SIGKILLed with its
ClientApp; with ``sampling.min-train-nodes = 3`` the round aggregates the 3 masked replies that
arrive (``sampling.straggler-timeout`` = 5 s after the third, rather than the generous
``sampling.round-timeout``), the run completes and the audit log names the missing silo.

The survivors' masked vectors contain masks shared with the dead silo: the server removes
them with its Shamir-shared key, and the aggregate equals the plain example-weighted mean
of the 3 survivors' updates (computed by the same code on the in-process grid) within
quantisation error, while what the server received from each survivor is not its update.
(A plain run losing a silo, over several rounds and with retries, is tested on the
in-process grid: tests/fl_app/test_reliability.py.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Error, Message

from fl_app.audit import read_audit_log, verify_audit_log
from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid
from strategies.secagg import protocol as P

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

SILOS = 4
VICTIM = 3  # partition id of the SuperNode that is killed

BASE = {
    "task": "breast-cancer",
    "num-server-rounds": 2,
    "training.local-epochs": 1,
    "seed": 3,
    "sampling.fraction-evaluate": 0.0,
    "sampling.min-evaluate-nodes": 0,
    "sampling.min-train-nodes": 3,
    "sampling.min-available-nodes": 3,
    "sampling.round-timeout": 600.0,
    "sampling.straggler-timeout": 5.0,
}


def _run_killing_the_victim(deployment, overrides: dict, kill_when: str):
    """Run ``overrides`` on 4 SuperNodes; SIGKILL the victim's SuperNode (and ClientApp)
    as soon as the streamed server log matches ``kill_when``; the run must complete.
    Returns (output, victim node id, run directory)."""
    fed = deployment(SILOS)
    flwr = fed.flwr_run(overrides)
    fed.wait_for(lambda: re.search(kill_when, flwr.log()), kill_when, proc=flwr)
    victim = fed.kill_silo(VICTIM)
    code = flwr.popen.wait(timeout=900)
    output = flwr.log()
    assert code == 0, output[-3000:]
    (run_dir,) = [p.parent for p in Path(overrides["output.run-dir"]).glob("*/audit.jsonl")]
    return output, victim, run_dir


def _audited_trains(run_dir: Path) -> list[dict]:
    entries = read_audit_log(run_dir / "audit.jsonl")
    assert verify_audit_log(run_dir / "audit.jsonl") == len(entries)
    assert entries[-1]["event"] == "run-end"  # written only on success
    return [e for e in entries if e["event"] == "train"]


class _LosesOneSilo(InProcessGrid):
    """The in-process grid, where the silo of partition ``VICTIM`` never answers a train
    instruction (the server gets Flower's error reply instead)."""

    def _deliver(self, msg):
        victim = min(self.contexts) + VICTIM
        if msg.metadata.message_type == "train" and msg.metadata.dst_node_id == victim:
            return Message(Error(1, "silo lost mid-round"), reply_to=msg)
        return super()._deliver(msg)


def _flat(state: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([t.numpy().astype(np.float64).ravel() for t in state.values()])


def test_secure_aggregation_recovers_a_silo_killed_after_masking(deployment, tmp_path):
    secure = {
        **BASE,
        "num-server-rounds": 1,
        "secagg.enabled": True,
        "robust.max-update-norm-ratio": 0.0,
        "output.run-dir": str(tmp_path / "runs"),
    }
    output, victim, run_dir = _run_killing_the_victim(
        deployment, secure, r"round 1: secure aggregation over 4 nodes, threshold 3"
    )
    # The victim took part in the key and share steps, then died: a dropout after masking.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (train,) = [r for r in metrics if r["phase"] == "train"]
    assert train["secagg-survivors"] == 3 and train["secagg-dropouts"] == 1, output[-3000:]
    (entry,) = _audited_trains(run_dir)
    assert entry["outcome"] == "aggregated"
    # The victim is missing (killed before it could reply; its partition id is known only
    # if it answered the roll call within the grace) and nothing of it was aggregated.
    assert [m["node-id"] for m in entry["missing"]] == [victim], entry
    assert entry["missing"][0]["partition-id"] in (VICTIM, None)
    assert victim not in {u["node-id"] for u in entry["updates"]}
    assert (run_dir / "model.pt").is_file()
    received = {u["partition-id"]: u for u in entry["updates"]}
    assert sorted(received) == [p for p in range(SILOS) if p != VICTIM]

    # The same round without secure aggregation, on the in-process grid with the same
    # silo lost: the survivors' plain updates, their hashes and plain FedAvg's result.
    plain_cfg = RunConfig.from_flower(
        {
            **RunConfig().to_flower(),
            **secure,
            "secagg.enabled": False,
            "output.run-dir": str(tmp_path / "plain"),
        }
    )
    grid = _LosesOneSilo(client_app, plain_cfg.to_flower(), SILOS)
    _, plain_dir = run_federation(grid, plain_cfg)
    (plain_entry,) = _audited_trains(plain_dir)
    plain = {u["partition-id"]: u for u in plain_entry["updates"]}
    assert sorted(plain) == sorted(received)
    n_params = sum(t.numel() for t in torch.load(plain_dir / "model.pt").values())
    for pid, update in received.items():
        # What the server received from a silo is not that silo's update: a different
        # byte string (sha256), one uint64 ring element per parameter instead of float32.
        assert update["sha256"] != plain[pid]["sha256"]
        assert update["bytes"] >= 8 * n_params > plain[pid]["bytes"]

    # The secure aggregate = plain FedAvg over the 3 survivors, within quantisation error.
    cfg = RunConfig.from_flower({**RunConfig().to_flower(), **secure})
    bound = P.quantization_error_bound(cfg.secagg.clip_range, cfg.secagg.quantization_bits)
    got = _flat(torch.load(run_dir / "model.pt"))
    expected = _flat(torch.load(plain_dir / "model.pt"))
    err = np.abs(got - expected)
    assert err.max() <= bound + 1e-6, (err.max(), bound)
    # ... and that round did train the model: the server's test loss fell.
    server = [r["loss"] for r in metrics if r["phase"] == "server"]
    assert len(server) == 2 and server[1] < server[0]
