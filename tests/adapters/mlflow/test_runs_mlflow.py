"""`fedsilo runs list --tracking-uri`: the federations a real MLflow server holds, with the
same figures as their run directories."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adapters import cli
from adapters.cli import app
from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_list_from_mlflow_shows_the_tracked_run_as_its_run_directory_does(
    mlflow_server, tmp_path, monkeypatch
):
    cfg = RunConfig(
        task="digits",
        num_server_rounds=2,
        training={"local-epochs": 1},
        sampling={"min-available-nodes": 3},
        output={"run-dir": str(tmp_path)},
        tracking={"mlflow-uri": mlflow_server, "experiment": "runs-list", "register-model": ""},
    )
    _, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), 3), cfg)
    final = [r for r in json.loads((run_dir / "metrics.json").read_text())
             if r["phase"] == "server"][-1]["accuracy"]  # fmt: skip
    monkeypatch.setattr(cli.console, "width", 250)
    args = ["runs", "list", "--tracking-uri", mlflow_server, "--experiment", "runs-list"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if run_dir.name in line]
    assert "digits" in line and "fedavg" in line and "2/2" in line and "finished" in line
    assert f"accuracy {final:.4f}" in line
    missing = CliRunner().invoke(app, [*args[:-1], "no-such-experiment"])
    assert missing.exit_code == 1 and "no MLflow experiment 'no-such-experiment'" in missing.output
