"""SIGKILL of the server-side run on the real deployment runtime, then ``output.resume = true``.

flower-superlink + 3 flower-supernode on loopback (tests/e2e/conftest.py). A 2-round run
(FedAdam, central DP with adaptive clipping, seeded sampling of 2 of 3 silos) is killed
with SIGKILL — the ``flwr-serverapp`` process the SuperLink started for it, mid round 2,
after round 1's checkpoint. A second ``flwr run`` with ``output.resume = true`` finds the
checkpoint (model, FedAdam moments, accountant, clip norm, RNG states), continues in the
same run directory and ends with the bit-identical model of an uninterrupted run of the
same config (here: the in-process grid, which the other e2e tests show is bit-identical to
``flwr run``). The DP noise is seeded (research key ``dp.reproducible-noise``) so that the
independent reference run can draw the same noise.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import psutil
import pytest
import torch

from fl_app.audit import read_audit_log, verify_audit_log
from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

SILOS = 3
SETTINGS = {
    "task": "breast-cancer",
    "num-server-rounds": 2,
    "training.local-epochs": 1,
    "seed": 11,
    "strategy": "fedadam",
    "dp.central": True,
    "dp.adaptive-clipping": True,
    "dp.noise-multiplier": 0.1,
    "robust.max-update-norm-ratio": 0.0,
    # Research key: the noise is seeded from `seed`, so an independent run can reproduce
    # it (by default it comes from OS entropy and only the checkpoint carries its state).
    "dp.reproducible-noise": True,
    "sampling.fraction-train": 0.67,
    "sampling.min-train-nodes": 2,
    "sampling.min-available-nodes": 3,
    "sampling.fraction-evaluate": 0.0,
    "sampling.min-evaluate-nodes": 0,
}


def _events(run_dir: Path, event: str) -> list[dict]:
    path = run_dir / "audit.jsonl"
    return [e for e in read_audit_log(path) if e["event"] == event] if path.is_file() else []


def test_sigkilled_server_run_resumes_to_the_uninterrupted_model(deployment, tmp_path):
    runs = tmp_path / "runs"
    fed = deployment(SILOS)
    first = fed.flwr_run({**SETTINGS, "output.run-dir": str(runs)})

    def run_dirs() -> list[Path]:
        return [p.parent for p in runs.glob("*/audit.jsonl")]

    def in_round_2() -> bool:  # round 1 checkpointed, round 2's instructions out
        dirs = run_dirs()
        checkpointed = dirs and [e["round"] for e in _events(dirs[0], "checkpoint")][-1:] == [1]
        return bool(checkpointed) and "[ROUND 2/2]" in first.log()

    fed.wait_for(in_round_2, "round 2 after round 1's checkpoint", proc=first)
    (serverapp,) = fed.serverapps()
    serverapp.kill()  # SIGKILL: no handler runs, nothing is flushed

    def dead() -> bool:  # gone, or a zombie its parent (flower-superexec) has not reaped
        try:
            return serverapp.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    fed.wait_for(dead, "the killed ServerApp to die", timeout=30)
    (run_dir,) = run_dirs()
    assert not (run_dir / "model.pt").exists()  # the run did not finish
    assert not _events(run_dir, "run-end")
    first.popen.kill()  # the CLI streaming the dead run's logs

    second = fed.flwr_run({**SETTINGS, "output.run-dir": str(runs), "output.resume": True})
    code = second.popen.wait(timeout=900)
    output = second.log()
    assert code == 0, output[-3000:]
    assert re.search(r"resuming after round 1 from \S+", output), output[-3000:]
    assert run_dirs() == [run_dir]  # continued in the killed run's directory
    assert psutil.pid_exists(fed.superlink.popen.pid)  # one SuperLink served both runs

    # The uninterrupted run of the same config.
    cfg = RunConfig.from_flower(
        {**RunConfig().to_flower(), **SETTINGS, "output.run-dir": str(tmp_path / "reference")}
    )
    _, reference_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), SILOS), cfg)
    got, want = (torch.load(d / "model.pt") for d in (run_dir, reference_dir))
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key

    # Round 1 from the killed run, round 2 from the resumed one, ε over both rounds.
    trains = {e["round"]: e for e in _events(run_dir, "train")}
    reference = {e["round"]: e for e in _events(reference_dir, "train")}
    assert sorted(trains) == [1, 2]
    assert trains[2]["epsilon"] == reference[2]["epsilon"] > 0
    for r in (1, 2):
        assert [u["sha256"] for u in trains[r]["updates"]] == [
            u["sha256"] for u in reference[r]["updates"]
        ], r
    assert verify_audit_log(run_dir / "audit.jsonl") == len(read_audit_log(run_dir / "audit.jsonl"))
    starts = _events(run_dir, "run-start")
    assert [s["resumed-after-round"] for s in starts] == [0, 1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in metrics if r["phase"] == "server"] == [0, 1, 2]
