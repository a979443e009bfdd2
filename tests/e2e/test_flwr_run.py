"""End-to-end: the real `flwr run . --stream` in local simulation (Ray backend).

Each test gets its own FLWR_HOME and SuperLink ports; `run_simulation` stops the
SuperLink (and every process under it) that `flwr run` leaves behind.
"""

import psutil
import pytest
import torch

from fl_app.config import RunConfig
from fl_app.local_run import run_simulation
from tasks import get_task

pytestmark = pytest.mark.e2e


def _no_superlink_left():
    return not [
        p for p in psutil.process_iter(["cmdline"])
        if any("fedsilo-flwr-" in c for c in (p.info.get("cmdline") or []))
    ]


def test_default_digits_run_learns_and_writes_its_run_directory(tmp_path):
    """README command 1: the defaults (10 silos, 5 rounds) reach ≥ 0.90 test accuracy."""
    run = run_simulation({}, num_supernodes=10, run_dir=tmp_path)
    assert run.ok, run.output[-3000:]
    server = [r for r in run.metrics if r["phase"] == "server"]
    assert [r["round"] for r in server] == list(range(6))  # round 0 = initial model
    assert server[0]["accuracy"] < 0.3
    assert server[-1]["accuracy"] >= 0.90, server[-1]
    # Per-round server accuracy is printed in the streamed output.
    assert "round 5 server: loss=" in run.output
    # Client-side evaluation is aggregated, weighted by examples, from all 10 silos.
    client_eval = run.final("evaluate")
    assert client_eval["replies"] == 10 and client_eval["failures"] == 0
    assert client_eval["accuracy"] > 0.8
    # The run directory holds the model, the metrics and the resolved config.
    files = {p.name for p in run.run_dir.iterdir()}
    assert {"model.pt", "metrics.json", "metrics.csv", "config.json"} <= files
    model = get_task("digits").build_model()
    model.load_state_dict(torch.load(run.run_dir / "model.pt"))
    test = get_task("digits").load_test(RunConfig())
    acc = get_task("digits").evaluate(model, test)["accuracy"]
    assert acc == pytest.approx(server[-1]["accuracy"])
    assert _no_superlink_left()


def test_same_config_and_seed_give_the_same_model(tmp_path):
    """Sampling 3 of 5 silos a round and tabular input scaling, twice: identical weights."""
    overrides = {
        "task": "breast-cancer",
        "num-server-rounds": 2,
        "fraction-train": 0.6,
        "fraction-evaluate": 0.4,
        "partitioner": "dirichlet",
        "strategy": "fedprox",
    }
    a = run_simulation(overrides, num_supernodes=5, run_dir=tmp_path / "a")
    b = run_simulation(overrides, num_supernodes=5, run_dir=tmp_path / "b")
    assert a.ok and b.ok, (a.output + b.output)[-3000:]
    assert a.final("train")["replies"] == 3
    wa = torch.load(a.run_dir / "model.pt")
    wb = torch.load(b.run_dir / "model.pt")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert a.metrics == b.metrics
    assert a.final("server")["roc-auc"] > 0.9


def test_bad_config_fails_before_round_1_with_the_fix(tmp_path):
    run = run_simulation({"strategy": "nope", "learning-rate": -1.0}, num_supernodes=2,
                         run_dir=tmp_path)
    assert run.status == "finished:failed" and not run.ok
    assert "'nope' is not a valid strategy" in run.status_details
    assert "Choose one of: fedavg, fedprox, fedadam" in run.output
    assert "run-config 'learning-rate' = -1.0" in run.output
    assert "[ROUND 1" not in run.output
    assert run.run_dir is None  # nothing half-written
