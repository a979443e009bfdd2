"""``python -m benchmarks.centralized --tasks … --merge``: new tasks' rows join an existing
report without rerunning the old ones; NER rows use entity-level F1 as primary metric."""

import json
import math

import pytest

from benchmarks.centralized import (
    BenchmarkError,
    BenchmarkResult,
    markdown_table,
    merge_reports,
    parse_args,
    primary_metrics,
    render_markdown,
    results_from_json,
    to_json,
)

BINARY = {"loss": 0.2, "accuracy": 0.95, "roc-auc": 0.99, "pr-auc": 0.98, "f1": 0.93}
NER = {"loss": 0.1, "accuracy": 0.99, "entity-precision": 0.97, "entity-recall": 0.96,
       "entity-f1": 0.965}  # fmt: skip


def _meta(git: str, command: str, tasks: list[str], rounds: int = 5) -> dict:
    return {
        "num-silos": 10, "strategy": "fedavg", "num-server-rounds": rounds, "local-epochs": 3,
        "total-epochs": 3 * rounds, "batch-size": 16, "learning-rate": 0.05, "momentum": 0.9,
        "seed": 42, "test-fraction": 0.2, "val-fraction": 0.1, "dirichlet-alpha": 0.5,
        "client-eval": False,
        "data": {t: {"pool-rows": 100, "test-rows": 25, "silo-train-rows": 90,
                     "iid-silo-rows": [9, 9], "dirichlet-silo-rows": [2, 30],
                     "test-positive-rate": None} for t in tasks},
        "flwr": "1.42.0", "torch": "2", "python": "3.11", "machine": "test", "git": git,
        "command": command,
    }  # fmt: skip


def _previous() -> dict:
    rows = [
        BenchmarkResult("fraud", "central", BINARY, 30.0, 900, 15),
        BenchmarkResult("fraud", "iid", {**BINARY, "roc-auc": 0.97}, 90.0, 900, 15),
        BenchmarkResult("ner", "central", {**NER, "entity-f1": 0.5}, 9.0, 90, 15),
    ]
    return json.loads(json.dumps(to_json(rows, _meta("old1", "python -m benchmarks.centralized",
                                                     ["fraud", "ner"]))))  # fmt: skip


def test_merge_keeps_other_tasks_and_replaces_rerun_ones():
    new = [
        BenchmarkResult("ner", "central", NER, 10.0, 90, 15),
        BenchmarkResult("ner", "iid", {**NER, "entity-f1": 0.945}, 60.0, 90, 15),
        BenchmarkResult("pneumonia", "central", BINARY, 20.0, 90, 15),
    ]
    command = "python -m benchmarks.centralized --tasks ner pneumonia --merge"
    rows, meta = merge_reports(_previous(), new, _meta("new2", command, ["ner", "pneumonia"]))

    assert [(r.task, r.setting) for r in rows] == [
        ("fraud", "central"), ("fraud", "iid"), ("ner", "central"), ("ner", "iid"),
        ("pneumonia", "central"),
    ]  # fmt: skip
    assert rows[1].metrics["roc-auc"] == 0.97  # kept as measured
    assert rows[2].metrics["entity-f1"] == 0.965  # the old NER row is replaced
    assert list(meta["data"]) == ["fraud", "ner", "pneumonia"]
    assert meta["provenance"]["fraud"]["git"] == "old1"
    assert meta["provenance"]["ner"] == {"git": "new2", "command": command}

    doc = render_markdown(rows, meta)
    assert "fraud: code old1" in doc and "ner, pneumonia: code new2" in doc
    assert "--merge" in doc
    data = json.loads(json.dumps(to_json(rows, meta), allow_nan=False))
    assert [r.task for r in results_from_json(data)] == [r.task for r in rows]
    ner_iid = data["rows"][3]
    assert ner_iid["primary"] == ["entity-f1"]
    assert ner_iid["gap_points"]["entity-f1"] == pytest.approx(-2.0)


def test_merge_refuses_a_report_with_other_settings():
    new = [BenchmarkResult("ner", "central", NER, 10.0, 90, 15)]
    with pytest.raises(BenchmarkError, match=r"num-server-rounds.*\(5, 2\)"):
        merge_reports(_previous(), new, _meta("x", "cmd", ["ner"], rounds=2))


def test_results_round_trip_nan_through_json():
    row = BenchmarkResult("fraud", "dirichlet", {**BINARY, "roc-auc": float("nan")}, 1.0, 9, 3)
    back = results_from_json(json.loads(json.dumps(to_json([row], _meta("g", "c", [])))))
    assert math.isnan(back[0].metrics["roc-auc"]) and back[0].metrics["f1"] == 0.93


def test_ner_rows_show_entity_f1_as_the_primary_metric():
    assert primary_metrics(NER) == ("entity-f1",)
    assert primary_metrics(BINARY) == ("roc-auc", "pr-auc")
    table = markdown_table([
        BenchmarkResult("ner", "central", NER, 10.0, 90, 15),
        BenchmarkResult("ner", "dirichlet", {**NER, "entity-f1": 0.915}, 50.0, 90, 15),
    ])  # fmt: skip
    row = next(line for line in table.splitlines() if "Dirichlet" in line)
    assert "**0.9150**" in row and "-5.0 entity F1" in row and "| 0.9900 |" in row


def test_merge_cli_needs_a_report(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--quick", "--merge"])
    assert "--merge needs a report" in capsys.readouterr().err
    args = parse_args(["--tasks", "ner", "--merge", "--out", str(tmp_path / "b.md")])
    assert args.merge and args.tasks == ["ner"]
