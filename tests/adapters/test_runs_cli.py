"""`fedsilo runs list | show | compare` on real run directories (in-process federations):
the figures are the run's own, the curves PNG is written, a failed run shows why, and a
bad reference exits non-zero with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters import cli
from adapters.cli import app
from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid
from fl_app.runs import LOG_FILE
from fl_app.sinks import MetricsSink

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _wide(monkeypatch):
    """Rich sizes its tables to the terminal: a wide one keeps each run on one line."""
    for console in (cli.console, cli.err_console):
        monkeypatch.setattr(console, "width", 250)


def _cli(*args: str):
    result = runner.invoke(app, list(args))
    return result, result.output  # stdout and stderr, as a terminal shows them


def _federate(root: Path, extra_sinks=(), **overrides) -> Path:
    cfg = RunConfig.from_flower({
        **RunConfig().to_flower(), "num-server-rounds": 2, "sampling.min-available-nodes": 3,
        "training.local-epochs": 1, "output.run-dir": str(root), **overrides,
    })  # fmt: skip
    _, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), 3), cfg, extra_sinks)
    return run_dir


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a = _federate(root)
    b = _federate(root, **{"training.learning-rate": 0.01})
    return root, a, b


def _final(run_dir: Path) -> float:
    rows = json.loads((run_dir / "metrics.json").read_text())
    return [r for r in rows if r["phase"] == "server"][-1]["accuracy"]


def test_list_shows_each_run_with_its_final_metric_and_status(two_runs):
    root, a, b = two_runs
    result, out = _cli("runs", "list", "--run-dir", str(root))
    assert result.exit_code == 0, out
    for run in (a, b):
        line = next(line for line in out.splitlines() if run.name[:20] in line)
        assert "digits" in line and "fedavg" in line and "2/2" in line and "finished" in line
        assert f"accuracy {_final(run):.4f}" in out


def test_show_prints_every_round_and_writes_the_curves(two_runs, tmp_path):
    root, a, _ = two_runs
    png = tmp_path / "curves.png"
    result, out = _cli("runs", "show", a.name, "--run-dir", str(root), "--png", str(png))
    assert result.exit_code == 0, out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [r for r in json.loads((a / "metrics.json").read_text()) if r["phase"] == "server"]
    for r in rows:
        assert f"{r['accuracy']:.4f}" in out and f"{r['loss']:.4f}" in out
    assert "finished" in out


def test_compare_shows_the_setting_that_differs_and_the_metric_deltas(two_runs):
    root, a, b = two_runs
    result, out = _cli("runs", "compare", str(a), str(b), "--run-dir", str(root))
    assert result.exit_code == 0, out
    line = next(line for line in out.splitlines() if "training.learning-rate" in line)
    assert "0.05" in line and "0.01" in line
    assert "config-hash" not in out and "fedsilo-version" not in out  # run facts, not settings
    delta = _final(b) - _final(a)
    assert f"{delta:+.4f}" in out


class _Crash(MetricsSink):
    """A sink that fails in round 2's server evaluation, as a broken dependency would."""

    def log_metrics(self, server_round, phase, metrics):
        if server_round == 2 and phase == "server":
            raise RuntimeError("disk full while writing round 2")


def test_a_failed_run_shows_the_exception_and_its_last_log_lines(tmp_path):
    with pytest.raises(RuntimeError, match="disk full"):
        _federate(tmp_path, extra_sinks=(_Crash(),))
    (run_dir,) = [p for p in tmp_path.iterdir() if (p / "config.json").is_file()]
    assert "round 1" in (run_dir / LOG_FILE).read_text()
    result, out = _cli("runs", "show", run_dir.name, "--run-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "failed: RuntimeError: disk full while writing round 2" in out
    assert f"last lines of {run_dir / LOG_FILE}" in out and "run failed" in out
    listed, out = _cli("runs", "list", "--run-dir", str(tmp_path))
    assert listed.exit_code == 0 and "failed" in out


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("runs", "show", "no-such-run"), "no run matches 'no-such-run'"),
        (("runs", "show", "digits"), "matches 2 runs"),
        (("runs", "list", "--run-dir", "/nonexistent/runs"), "no run directory root at"),
    ],
)
def test_a_bad_reference_exits_non_zero_with_one_line(two_runs, args, reason):
    root, _, _ = two_runs
    extra = () if "--run-dir" in args else ("--run-dir", str(root))
    result, out = _cli(*args, *extra)
    assert result.exit_code == 1
    assert reason in out and len(out.strip().splitlines()) == 1
