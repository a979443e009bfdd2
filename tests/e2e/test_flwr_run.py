"""End-to-end: the real `flwr run . --stream` in local simulation (Ray backend).

Each test gets its own FLWR_HOME and SuperLink ports; `run_simulation` stops the
SuperLink (and every process under it) that `flwr run` leaves behind.
"""

import json
import re
import shutil

import pytest
import torch

from fl_app.audit import read_audit_log
from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid
from fl_app.local_run import PROJECT_DIR, run_simulation, superlinks_of
from fl_app.sinks import is_runtime_metric
from tasks import get_task

pytestmark = pytest.mark.e2e


def _no_superlink_left(run):
    """The SuperLink this run started (found by its own FLWR_HOME) is gone; SuperLinks of
    runs other xdist workers have going at the same time are not this test's business."""
    assert run.flwr_home is not None
    return not superlinks_of(run.flwr_home)


def _readme_run_command() -> str:
    """The `flwr run …` part of README command 1, verbatim (after its `pip install … &&`)."""
    readme = (PROJECT_DIR / "README.md").read_text()
    command_1 = re.findall(r"```bash\n# 1\..*\n(.*)\n```", readme)[0]
    return command_1.split("&&", 1)[1].strip()


def test_readme_command_1_runs_ten_silos_learns_and_writes_its_run_directory():
    """README command 1, run literally under a brand-new FLWR_HOME (Flower's own default
    federation simulates 2 SuperNodes): the promised 10 silos and 5 rounds, ≥ 0.90 test
    accuracy, and the run directory it describes."""
    command = _readme_run_command()
    assert command.startswith("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run . ")
    run = run_simulation({}, shell_command=command)
    if run.run_dir is not None:
        request_cleanup.append(run.run_dir)
    assert run.ok, run.output[-3000:]
    assert "(10 simulated SuperNodes)" in run.output
    assert "roll call: 10 silos" in run.output
    # The model travels packed (fl_app.transport) both ways through Flower's runtime.
    assert "transport: instructions carry" in run.output
    assert "transport: replies arrive packed" in run.output
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
    default = RunConfig()
    test = get_task("digits").load_test(default.data, default.seed)
    acc = get_task("digits").evaluate(model, test)["accuracy"]
    assert acc == pytest.approx(server[-1]["accuracy"])
    assert _no_superlink_left(run)


request_cleanup: list = []  # run directories README command 1 wrote into outputs/


@pytest.fixture(autouse=True, scope="module")
def _remove_readme_run_dirs():
    yield
    for path in request_cleanup:
        shutil.rmtree(path, ignore_errors=True)


def _in_process(overrides, num_nodes, run_dir):
    cfg = RunConfig.from_flower(
        {**RunConfig().to_flower(), **overrides, "output.run-dir": str(run_dir)}
    )
    _, out = run_federation(InProcessGrid(client_app, cfg.to_flower(), num_nodes), cfg)
    return torch.load(out / "model.pt"), json.loads((out / "metrics.json").read_text())


def _deterministic(rows):
    return [{k: v for k, v in row.items() if not is_runtime_metric(k)} for row in rows]


def test_same_config_and_seed_give_the_same_model(tmp_path):
    """Sampling 3 of 5 silos a round, Dirichlet split, FedProx, tabular input scaling and
    top-k + int8 update compression with EF21 error feedback (state in each silo's
    context and on the server): the real `flwr run` (Ray workers) and two in-process runs
    give bit-identical weights."""
    overrides = {
        "task": "breast-cancer",
        "num-server-rounds": 2,
        "sampling.fraction-train": 0.6,
        "sampling.fraction-evaluate": 0.4,
        "data.partitioner": "dirichlet",
        "strategy": "fedprox",
        "compression.method": "topk+int8",
        "compression.topk-fraction": 0.05,
        "compression.topk-warmup-rounds": 0,  # both rounds top-k + EF21
    }
    run = run_simulation(overrides, num_supernodes=5, run_dir=tmp_path / "flwr")
    assert run.ok, run.output[-3000:]
    train = run.final("train")
    assert train["replies"] == 3 and train["undecodable-updates"] == 0
    # Bytes of the replies as Flower serialised them: compressed vs the same replies dense.
    assert train["bytes-uploaded"] < 0.25 * train["bytes-uploaded-dense"], train
    weights = torch.load(run.run_dir / "model.pt")
    for name in ("a", "b"):
        again, metrics = _in_process(overrides, 5, tmp_path / name)
        assert weights.keys() == again.keys()
        for key in weights:
            assert torch.equal(weights[key], again[key]), key
        assert _deterministic(metrics) == _deterministic(run.metrics)
    assert run.final("server")["roc-auc"] > 0.9


def test_bad_config_fails_before_round_1_with_the_fix(tmp_path):
    run = run_simulation(
        {"strategy": "nope", "training.learning-rate": -1.0}, num_supernodes=2, run_dir=tmp_path
    )
    assert run.status == "finished:failed" and not run.ok
    assert "'nope' is not a valid strategy" in run.status_details
    assert "Choose one of: fedavg, fedprox, fedadam" in run.output
    assert "run-config 'training.learning-rate' = -1.0" in run.output
    assert "[ROUND 1" not in run.output
    assert run.run_dir is None  # nothing half-written


def test_flwr_run_with_oort_selects_logs_and_reports_why(tmp_path):
    """`flwr run . --run-config "selection.policy='oort' …"` on the real simulation
    runtime: the chosen silos train, each round's choice and reasons are in the audit log,
    every silo's `selected` flag is in silo_metrics.json, the stream prints each round's
    selection and GTG-Shapley scores, and the run learns."""
    run = run_simulation(
        {"selection.policy": "oort", "sampling.fraction-train": 0.5, "num-server-rounds": 3,
         "simulation.speed-spread": 10.0, "selection.fairness-rounds": 1,
         "contribution.method": "gtg-shapley"},
        num_supernodes=6,
        run_dir=tmp_path,
    )  # fmt: skip
    assert run.ok, run.output[-3000:]
    audit = read_audit_log(run.run_dir / "audit.jsonl")
    selections = {e["round"]: e for e in audit if e["event"] == "selection"}
    assert sorted(selections) == [1, 2, 3]
    for train in (e for e in audit if e["event"] == "train"):
        chosen = selections[train["round"]]
        assert sorted(u["partition-id"] for u in train["updates"]) == chosen["partitions"]
        assert len(chosen["partitions"]) == 3 and all(chosen["reasons"].values())
    # fairness-rounds = 1 with 6 silos and 3 slots: rounds 1 and 2 cover every silo.
    assert set(selections[1]["partitions"]) | set(selections[2]["partitions"]) == set(range(6))
    rows = json.loads((run.run_dir / "silo_metrics.json").read_text())
    flags = [r for r in rows if r["phase"] == "selection"]
    assert len(flags) == 3 * 6 and sum(r["selected"] for r in flags) == 9
    assert run.final("server")["accuracy"] > 0.8
    # The stream shows each round's choice and each chosen silo's contribution score.
    for rnd, chosen in selections.items():
        line = f"round {rnd} selection: 3 of 6 silos "
        assert line in run.output, run.output[-3000:]
        scored = re.search(rf"round {rnd} contribution \(\d+ evaluations\): (.*)", run.output)
        assert scored is not None, run.output[-3000:]
        assert sorted(int(item.split(":")[0]) for item in scored[1].split()) == chosen["partitions"]
    contributions = (run.run_dir / "contributions.csv").read_text().splitlines()
    assert contributions[0].startswith("partition-id") and len(contributions) == 1 + 6
