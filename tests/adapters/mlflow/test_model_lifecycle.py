"""The model lifecycle on a real MLflow tracking server: every run registers its model; the
alias ``champion`` moves only to a model that beats the champion on the same server test
set; the ONNX model is logged beside the PyTorch one."""

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from adapters.mlflow.registry import CHAMPION, better
from fl_app.audit import read_audit_log, verify_audit_log
from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(mlflow_server, tmp_path, experiment, rounds, epochs, learning_rate, **extra):
    cfg = RunConfig(
        task="digits",
        num_server_rounds=rounds,
        training={"local-epochs": epochs, "learning-rate": learning_rate},
        output={"run-dir": str(tmp_path)},
        tracking={"mlflow-uri": mlflow_server, "experiment": experiment},
        **extra,
    )
    result, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), 3), cfg)
    audit = read_audit_log(run_dir / "audit.jsonl")
    (decision,) = [e for e in audit if e["event"] == "model-registry"]
    verify_audit_log(run_dir / "audit.jsonl")  # the sink's entry continues the hash chain
    return run_dir, result.evaluate_metrics_serverapp[rounds]["accuracy"], decision


def test_champion_moves_only_to_a_model_that_beats_it_on_this_test_set(mlflow_server, tmp_path):
    client = MlflowClient(tracking_uri=mlflow_server)
    name = "fedsilo-digits"  # tracking.register-model = "auto"

    # 1. The first registered model becomes champion.
    _, first_acc, first = _run(mlflow_server, tmp_path, "lifecycle", 2, 1, 0.05)
    assert first["promoted"] and first["version"] == "1" and first["champion-version"] is None
    assert first["candidate"] == pytest.approx(first_acc)  # re-evaluated: the server's figure
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"

    # 2. An honestly worse run (1 round, 1 epoch, a tenth of the learning rate) is
    # registered but does not take the alias; the champion was re-scored on its test set.
    _, worse_acc, worse = _run(mlflow_server, tmp_path, "lifecycle", 1, 1, 0.005)
    assert worse_acc < first_acc
    assert worse["version"] == "2" and not worse["promoted"]
    assert worse["champion-version"] == "1" and worse["champion"] == pytest.approx(first_acc)
    assert "does not beat champion version 1" in worse["reason"]
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"

    # 3. A better run (5 rounds, 2 epochs) moves it.
    best_dir, better_acc, best = _run(mlflow_server, tmp_path, "lifecycle", 5, 2, 0.05)
    assert better_acc > first_acc
    assert best["promoted"] and best["version"] == "3"
    assert best["champion"] == pytest.approx(first_acc)
    assert best["candidate"] == pytest.approx(better_acc)
    assert client.get_model_version_by_alias(name, CHAMPION).version == "3"

    # The decisions are on the MLflow runs and model versions too.
    runs = {
        r.data.tags["registry.version"]: r
        for r in client.search_runs(
            [client.get_experiment_by_name("lifecycle").experiment_id],
            "tags.`registry.version` != ''",
        )
    }
    assert {v: r.data.tags["registry.decision"] for v, r in runs.items()} == {
        "1": "promoted", "2": "kept", "3": "promoted",
    }  # fmt: skip
    assert runs["2"].data.metrics["registry/champion-accuracy"] == pytest.approx(first_acc)
    assert runs["2"].data.metrics["registry/candidate-accuracy"] == pytest.approx(worse_acc)
    assert client.get_model_version(name, "2").tags["fedsilo.decision"] == "kept"

    # A model of another task registered under the same name cannot be scored against
    # the champion on its test set: the alias stays, and the reason is recorded.
    other = RunConfig(
        task="breast-cancer",
        num_server_rounds=1,
        output={"run-dir": str(tmp_path)},
        tracking={"mlflow-uri": mlflow_server, "experiment": "lifecycle", "register-model": name},
    )
    _, other_dir = run_federation(InProcessGrid(client_app, other.to_flower(), 3), other)
    (refused,) = [
        e for e in read_audit_log(other_dir / "audit.jsonl") if e["event"] == "model-registry"
    ]
    assert refused["version"] == "4" and not refused["promoted"] and refused["champion"] is None
    assert (
        "champion version 3 cannot be evaluated on this run's server test set"
        in (refused["reason"])
    )
    assert client.get_model_version_by_alias(name, CHAMPION).version == "3"

    # The champion is the best run's model: its weights are that run's model.pt.
    champion = client.get_model_version_by_alias(name, CHAMPION)
    assert client.get_run(champion.run_id).info.run_name == best_dir.name
    logged = mlflow.artifacts.download_artifacts(
        run_id=champion.run_id, artifact_path="model.pt", dst_path=str(tmp_path / "dl"),
        tracking_uri=mlflow_server,
    )  # fmt: skip
    saved, kept = torch.load(best_dir / "model.pt"), torch.load(logged)
    assert all(torch.equal(saved[k], kept[k]) for k in saved)


def test_better_is_strict_and_knows_losses():
    assert better(0.9, 0.8, "accuracy") and not better(0.8, 0.8, "accuracy")
    assert better(0.2, 0.3, "loss") and not better(0.4, 0.3, "loss")
    assert not better(float("nan"), 0.1, "accuracy") and better(0.1, float("nan"), "accuracy")


def test_onnx_model_is_logged_beside_the_pytorch_one(mlflow_server, tmp_path):
    cfg = RunConfig(
        task="breast-cancer",
        num_server_rounds=1,
        training={"local-epochs": 1},
        output={"run-dir": str(tmp_path)},
        tracking={"mlflow-uri": mlflow_server, "experiment": "onnx", "register-model": ""},
        export={"onnx": True},
    )
    _, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), 3), cfg)
    client = MlflowClient(tracking_uri=mlflow_server)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("onnx").experiment_id],
        f"attributes.run_name = '{run_dir.name}'",
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "onnx"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "onnx")} == {
        "onnx/model.onnx", "onnx/parity.json",
    }  # fmt: skip
    mlflow.set_tracking_uri(mlflow_server)
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    )
    by_name = {m.name: m for m in models if m.source_run_id == run.info.run_id}
    assert set(by_name) == {"model", "onnx-model"}
    onnx_model = mlflow.onnx.load_model(by_name["onnx-model"].model_uri)
    assert [i.name for i in onnx_model.graph.input] == ["input"]
    flavors = mlflow.models.get_model_info(by_name["onnx-model"].model_uri).flavors
    assert "onnx" in flavors and "pytorch" not in flavors
    # Not registered ("" = off), so no registry decision was audited.
    assert "model-registry" not in {e["event"] for e in read_audit_log(run_dir / "audit.jsonl")}
