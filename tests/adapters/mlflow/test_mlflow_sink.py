"""MLflow tracking of a real 3-round, 3-silo federation on a real tracking server."""

import pytest
from mlflow.tracking import MlflowClient

from adapters.mlflow import MlflowSink, MlflowUnavailableError
from fl_app import RUN_INFO_KEYS, VERSION
from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid


def test_federation_is_tracked_with_parent_and_silo_runs(mlflow_server, tmp_path):
    cfg = RunConfig(
        task="breast-cancer",
        num_server_rounds=3,
        strategy="robust-median",
        output={"run-dir": str(tmp_path)},
        tracking={
            "mlflow-uri": mlflow_server,
            "experiment": "test-federation",
            "register-model": "fedsilo-breast-cancer",
        },
    )
    result, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), 3), cfg)

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("test-federation")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    silos = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    (parent,) = parents
    assert parent.info.run_name == run_dir.name and parent.info.status == "FINISHED"
    assert parent.data.params["strategy"] == "robust-median"
    assert parent.data.params["config-hash"] == cfg.fingerprint()
    assert parent.data.params["fedsilo-version"] == VERSION
    assert len(parent.data.params) == len(cfg.to_flower()) + len(RUN_INFO_KEYS)

    # Every metric at every step: server metrics for rounds 0..3, client metrics for 1..3.
    server_acc = client.get_metric_history(parent.info.run_id, "server/accuracy")
    assert sorted(m.step for m in server_acc) == [0, 1, 2, 3]
    assert server_acc[-1].value == pytest.approx(result.evaluate_metrics_serverapp[3]["accuracy"])
    for key in (
        "train/train-loss",
        "evaluate/roc-auc",
        "train/rejected-updates",
        "train/replies",
        "server/pr-auc",
    ):
        steps = sorted(m.step for m in client.get_metric_history(parent.info.run_id, key))
        assert steps[-3:] == [1, 2, 3], key

    assert sorted(r.info.run_name for r in silos) == ["silo-0", "silo-1", "silo-2"]
    for silo in silos:
        assert silo.data.tags["mlflow.parentRunId"] == parent.info.run_id
        steps = [m.step for m in client.get_metric_history(silo.info.run_id, "train/train-loss")]
        assert sorted(steps) == [1, 2, 3]
        assert len(client.get_metric_history(silo.info.run_id, "evaluate/accuracy")) == 3

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"model.pt", "metrics.json", "metrics.csv", "audit.jsonl"} <= artifacts
    versions = client.search_model_versions("name='fedsilo-breast-cancer'")
    assert versions and versions[0].run_id == parent.info.run_id


def test_unreachable_tracking_server_is_a_clear_error():
    with pytest.raises(MlflowUnavailableError, match=r"tracking.mlflow-uri"):
        MlflowSink("http://127.0.0.1:9", experiment="x")
