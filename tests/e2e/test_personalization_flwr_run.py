"""End-to-end: `flwr run . --stream` with a personalisation method (Ditto): every silo
evaluates the global model and its personal one, and the stream prints both summaries."""

import json
import re

import pytest

from fl_app.local_run import run_simulation

pytestmark = pytest.mark.e2e


def test_ditto_flwr_run_streams_global_vs_personal_metrics_and_fairness(tmp_path):
    silos, rounds = 4, 2
    run = run_simulation(
        {"personalization.method": "ditto", "num-server-rounds": rounds,
         "training.local-epochs": 1, "data.partitioner": "dirichlet",
         "data.dirichlet-alpha": 0.3},
        num_supernodes=silos,
        run_dir=tmp_path,
    )  # fmt: skip
    assert run.ok, run.output[-3000:]
    for rnd in range(1, rounds + 1):
        assert f"round {rnd} fairness of accuracy over {silos} silos: min=" in run.output
        assert f"round {rnd} fairness of personal-accuracy over {silos} silos: min=" in run.output
        line = re.search(
            rf"round {rnd} accuracy global vs personal: worst ([\d.]+) vs ([\d.]+), "
            rf"mean ([\d.]+) vs ([\d.]+)",
            run.output,
        )
        assert line is not None, run.output[-3000:]
        row = next(r for r in run.metrics if r["phase"] == "evaluate" and r["round"] == rnd)
        assert float(line[1]) == pytest.approx(row["silo-accuracy-min"], abs=1e-4)
        assert float(line[2]) == pytest.approx(row["silo-personal-accuracy-min"], abs=1e-4)
    silo_rows = json.loads((run.run_dir / "silo_metrics.json").read_text())
    evaluated = [r for r in silo_rows if r["phase"] == "evaluate"]
    assert len(evaluated) == silos * rounds
    assert all(0 <= r["personal-accuracy"] <= 1 for r in evaluated)
    # Ditto's personal models differ from the global one on the silos' skewed data.
    assert any(r["personal-accuracy"] != r["accuracy"] for r in evaluated)
