"""The centralised baseline of ``benchmarks.centralized`` and its report (no flwr run here;
the end-to-end tests cover the federated side)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.centralized import (
    COLUMNS,
    TIME_COLUMNS,
    BenchmarkResult,
    check_run,
    fl_overrides,
    gaps,
    load_note,
    markdown_table,
    markdown_time_table,
    parse_args,
    plan_task,
    pooled_silo_train,
    project_snapshot,
    render_markdown,
    resolve_config,
    run_timing,
    summarise,
    time_ratios,
    to_json,
    train_centralised,
)
from fl_app.local_run import SimulationRun
from tasks import get_task


@pytest.fixture(scope="module")
def breast_cancer_cfg():
    return resolve_config(fl_overrides("breast-cancer", "iid"))


def test_centralised_breast_cancer_is_good_and_deterministic(breast_cancer_cfg):
    first = train_centralised(breast_cancer_cfg)
    second = train_centralised(breast_cancer_cfg)

    assert first.metrics["roc-auc"] >= 0.9
    assert dict(first.metrics) == dict(second.metrics)
    assert first.seed == breast_cancer_cfg.seed
    assert (
        first.epochs
        == breast_cancer_cfg.num_server_rounds * breast_cancer_cfg.training.local_epochs
    )
    assert first.setting == "central"


def test_centralised_trains_on_exactly_the_silos_rows(breast_cancer_cfg):
    task = get_task("breast-cancer")
    pooled, moments = pooled_silo_train(breast_cancer_cfg)
    silo_rows = sum(
        len(task.load_partition(i, 10, breast_cancer_cfg.data, breast_cancer_cfg.seed).train)
        for i in range(10)
    )
    pool, test = task.split(breast_cancer_cfg.data, breast_cancer_cfg.seed)

    assert len(pooled) == silo_rows == train_centralised(breast_cancer_cfg).train_rows
    assert len(pooled) < len(pool)  # the silos' validation rows are not trained on
    assert len(moments) == 10 and sum(m["count"][0] for m in moments) == len(pooled)
    assert len(test) == len(task.load_test(breast_cancer_cfg.data, breast_cancer_cfg.seed))


def test_fl_config_matches_the_baseline_config():
    iid = resolve_config(fl_overrides("fraud", "iid", rounds=7, seed=3))
    skew = resolve_config(fl_overrides("fraud", "dirichlet", rounds=7, seed=3))

    assert (iid.num_server_rounds, iid.seed, iid.strategy) == (7, 3, "fedavg")
    assert skew.data.partitioner == "dirichlet" and skew.data.dirichlet_alpha == 0.5
    assert iid.replace({"data.partitioner": "dirichlet"}) == skew


def test_failed_run_raises_with_output_tail(breast_cancer_cfg):
    run = SimulationRun(1, "\n".join(f"line {i}" for i in range(200)), None, [])
    with pytest.raises(RuntimeError, match="exited with code 1") as info:
        check_run(run, breast_cancer_cfg)
    assert "line 199" in str(info.value) and "line 0\n" not in str(info.value)

    short = SimulationRun(0, "ok", None, [{"round": 1, "phase": "server", "accuracy": 0.5}])
    with pytest.raises(RuntimeError, match="round 1"):
        check_run(short, breast_cancer_cfg)


def _results() -> list[BenchmarkResult]:
    binary = {"loss": 0.2, "accuracy": 0.95, "roc-auc": 0.99, "pr-auc": 0.98, "f1": 0.93}
    return [
        BenchmarkResult("breast-cancer", "central", binary, 0.5, 405, 15),
        BenchmarkResult(
            "breast-cancer", "iid", {**binary, "roc-auc": 0.97, "pr-auc": 0.95}, 50.0, 405, 15
        ),
        BenchmarkResult("breast-cancer", "dirichlet", {**binary, "roc-auc": 0.5}, 55.0, 400, 15),
        BenchmarkResult(
            "digits", "central", {"loss": 0.1, "accuracy": 0.98, "f1-macro": 0.97}, 2.0, 1287, 15
        ),
        BenchmarkResult(
            "digits", "iid", {"loss": 0.2, "accuracy": 0.955, "f1-macro": 0.95}, 40.0, 1287, 15
        ),
    ]


def test_gaps_and_time_ratios():
    g = gaps(_results())
    assert g[0] is None and g[3] is None
    assert g[1] == pytest.approx({"roc-auc": -2.0, "pr-auc": -3.0})
    assert g[4] == pytest.approx({"accuracy": -2.5})
    assert time_ratios(_results())[1] == pytest.approx(100.0)


def test_markdown_table_has_columns_and_gaps():
    table = markdown_table(_results())
    lines = table.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]

    assert header == list(COLUMNS)
    for col in ("task", "setting", "seeds", "accuracy", "ROC-AUC", "PR-AUC", "F1", "gap"):
        assert any(col in h for h in header)
    assert len(lines) == 2 + len(_results())
    assert all(line.count("|") == len(COLUMNS) + 1 for line in lines)
    iid_row = next(line for line in lines if "FL, IID" in line and "breast-cancer" in line)
    assert "-2.0 ROC · -3.0 PR" in iid_row and "**0.9700**" in iid_row
    times = markdown_time_table(_results()).splitlines()
    assert [c.strip() for c in times[0].strip("|").split("|")] == list(TIME_COLUMNS)
    assert "×100" in next(line for line in times if "FL, IID" in line and "breast" in line)
    digits_row = next(line for line in lines if line.startswith("| digits | FL"))
    assert "-2.5 acc" in digits_row and "0.9500" in digits_row  # macro-F1 shown
    assert "reference" in next(line for line in lines if "centralised" in line)


def test_render_markdown_and_json():
    meta = {
        "num-silos": 10, "strategy": "fedavg", "num-server-rounds": 5, "local-epochs": 3,
        "total-epochs": 15, "batch-size": 16, "learning-rate": 0.05, "momentum": 0.9,
        "seed": 42, "test-fraction": 0.2, "val-fraction": 0.1, "dirichlet-alpha": 0.5,
        "data": {"breast-cancer": {
            "pool-rows": 455, "test-rows": 114, "silo-train-rows": 405,
            "iid-silo-rows": [40, 41], "dirichlet-silo-rows": [2, 125],
        }},
        "flwr": "1.42.0", "torch": "2", "python": "3.11", "machine": "test",
        "command": "python -m benchmarks.centralized",
    }  # fmt: skip
    doc = render_markdown(_results(), meta)
    assert "10 silos" in doc and "5 × 3 = **15 epochs**" in doc and "| 455 | 405 |" in doc
    assert markdown_table(_results()) in doc
    assert "collapsed" in doc  # the chance-level Dirichlet row is flagged

    data = json.loads(json.dumps(to_json(_results(), meta), allow_nan=False))
    rows = data["rows"]
    assert [r["setting"] for r in rows] == ["central", "iid", "dirichlet", "central", "iid"]
    assert rows[1]["gap_points"]["roc-auc"] == pytest.approx(-2.0)
    assert rows[2]["collapsed"] and not rows[1]["collapsed"]
    assert rows[0]["gap_points"] is None and math.isclose(rows[1]["time_ratio_vs_central"], 100)


def _seeded(seed: int, central: float, iid: float, **extra) -> list[BenchmarkResult]:
    return [
        BenchmarkResult("digits", "central", {"accuracy": central}, 10.0, 90, 15,
                        {"train-seconds": 8.0}, seed=seed),
        BenchmarkResult("digits", "iid", {"accuracy": iid}, 100.0, 90, 15,
                        {"rounds-seconds": 40.0, "silo-train-seconds": 12.0, **extra},
                        seed=seed),
    ]  # fmt: skip


def test_rows_over_seeds_show_mean_std_and_paired_gaps():
    # Seed 43's FL run is better than seed 42's, but so is its centralised run: the gap
    # is taken per seed, so its spread is that of the differences (-1 and -3 points).
    results = [*_seeded(42, 0.90, 0.89), *_seeded(43, 0.96, 0.93), *_seeded(44, 0.93, 0.91)]
    central, iid = summarise(results)

    assert (central.setting, iid.setting) == ("central", "iid")
    assert iid.seeds == (42, 43, 44) and central.gaps is None
    assert iid.gaps["accuracy"] == pytest.approx([-1.0, -3.0, -2.0])
    assert iid.training_ratio == pytest.approx([1.5] * 3)
    assert iid.overhead == pytest.approx([60.0] * 3)
    assert central.overhead == pytest.approx([2.0] * 3)

    row = next(line for line in markdown_table(results).splitlines() if "FL, IID" in line)
    assert "| 42, 43, 44 |" in row and "**0.9100 ± 0.0200**" in row
    assert "-2.0 ± 1.0 acc" in row
    times = next(line for line in markdown_time_table(results).splitlines() if "IID" in line)
    cells = [c.strip() for c in times.strip("|").split("|")]
    assert cells[2:] == ["100.0 ± 0.0", "40.0 ± 0.0", "12.0 ± 0.0", "60.0 ± 0.0", "×10", "×1.5"]

    meta = {
        "num-silos": 10, "strategy": "fedavg", "num-server-rounds": 5, "local-epochs": 3,
        "total-epochs": 15, "batch-size": 16, "learning-rate": 0.05, "momentum": 0.9,
        "seed": 42, "seeds": [42, 43, 44], "test-fraction": 0.2, "val-fraction": 0.1,
        "dirichlet-alpha": 0.5, "data": {}, "flwr": "1.42.0", "torch": "2",
        "python": "3.11", "machine": "test", "command": "python -m benchmarks.centralized",
    }  # fmt: skip
    doc = render_markdown(results, meta)
    assert "seeds 42, 43, 44" in doc and "60% of the wall time is outside the rounds" in doc
    assert "training adds up to 30% of the rounds' wall time" in doc
    data = json.loads(json.dumps(to_json(results, meta), allow_nan=False))
    assert [r["seed"] for r in data["rows"]] == [42, 42, 43, 43, 44, 44]
    assert data["summary"][1]["gaps"]["accuracy"] == pytest.approx([-1.0, -3.0, -2.0])


def test_run_timing_reads_rounds_and_silo_training(tmp_path):
    (tmp_path / "silo_metrics.json").write_text(json.dumps([
        {"round": 1, "phase": "train", "partition-id": 0, "local-train-seconds": 1.5},
        {"round": 1, "phase": "train", "partition-id": 1, "local-train-seconds": 2.5},
        {"round": 2, "phase": "train", "partition-id": 0, "local-train-seconds": 1.0},
        {"round": 2, "phase": "evaluate", "partition-id": 0, "accuracy": 0.9},
    ]))  # fmt: skip
    metrics = [
        {"round": 0, "phase": "server", "accuracy": 0.1},
        {"round": 1, "phase": "train", "train-seconds": 3.0},
        {"round": 1, "phase": "server", "accuracy": 0.5, "round-seconds": 4.0},
        {"round": 2, "phase": "server", "accuracy": 0.8, "round-seconds": 6.0},
    ]
    timing = run_timing(SimulationRun(0, "", tmp_path, metrics))
    assert timing == {"rounds-seconds": 10.0, "silo-train-seconds": 5.0}
    assert run_timing(SimulationRun(0, "", None, metrics)) == {"rounds-seconds": 10.0}


def test_seeds_option():
    assert parse_args([]).seeds == [42, 43, 44]
    assert parse_args(["--quick"]).seeds == [42]
    assert parse_args(["--seeds", "7", "8"]).seeds == [7, 8]
    with pytest.raises(SystemExit):
        parse_args(["--seeds", "7", "7"])


def test_project_snapshot_holds_the_app_without_vcs_or_outputs():
    with project_snapshot() as snapshot:
        assert (snapshot / "pyproject.toml").is_file()
        assert (snapshot / "fl_app" / "server_app.py").is_file()
        assert not (snapshot / ".git").exists()
        assert not list(snapshot.rglob("__pycache__"))
        plan = plan_task("digits", rounds=3, project_dir=snapshot)
    assert [cfg.data.partitioner for _, cfg in plan.federated] == ["iid", "dirichlet"]
    assert plan.central.num_server_rounds == 3 and plan.central.sampling.fraction_evaluate == 0.0


def test_load_note_flags_a_busy_machine():
    quiet = BenchmarkResult("digits", "central", {"accuracy": 0.9}, 1.0, 10, 1, {"load-1min": 0.5})
    busy = BenchmarkResult("digits", "iid", {"accuracy": 0.9}, 9.0, 10, 1, {"load-1min": 6.0})
    assert "0.5–6.0 on 2 CPUs" in load_note([quiet, busy], cpus=2)
    assert "inflated" in load_note([quiet, busy], cpus=2)
    assert "inflated" not in load_note([quiet], cpus=2)
    assert load_note(_results(), cpus=2) == ""
