"""The robustness matrix of ``benchmarks.robust``: its plan, a few real one-round cells
on the in-process grid (6 silos), the worst-case analysis and the JSON / Markdown / PNG
outputs. The full matrix is ``python -m benchmarks.robust``."""

from __future__ import annotations

import json
import logging
import math

import pytest

from benchmarks import robust as bench
from benchmarks.robust import (
    AGGREGATORS,
    ATTACKS,
    FILTER,
    NUM_BYZANTINE,
    PARTITIONERS,
    aggregator,
    clean_reference,
    describe,
    discussion,
    flwr_run_command,
    load_resumable,
    markdown_matrix,
    plan,
    render_markdown,
    run_matrix,
    worst_case,
    write_outputs,
)
from strategies.registry import STRATEGIES
from strategies.robust.attacks import INFLATION_FACTOR
from strategies.robust.simulation import model_attacks

ROW_KEYS = {"partitioner", "attack", "aggregator", "accuracy", "seconds"}


def test_plan_covers_every_attack_and_every_robust_registry_strategy():
    cells = plan()
    assert len(cells) == len(PARTITIONERS) * len(ATTACKS) * len(AGGREGATORS)
    assert len({c.key for c in cells}) == len(cells)
    strategies = {dict(c.overrides)["strategy"] for c in cells}
    # Every strategy the registry calls robust, plus FedAvg as the undefended baseline;
    # mean-based and fairness strategies are not meant to resist Byzantine silos.
    assert strategies == set(STRATEGIES.names(family="robust")) | {"fedavg"}
    for cell in cells:
        cfg = dict(cell.overrides)
        assert cell.num_clients == 20
        assert (cfg["attack.fraction"], cfg["robust.num-byzantine"]) == (0.2, NUM_BYZANTINE)
        assert cfg["data.partitioner"] == cell.partitioner and cfg["attack.kind"] == cell.attack
        expected_filter = 10.0 if cell.aggregator == FILTER[0].label else 0.0
        assert cfg["robust.max-update-norm-ratio"] == expected_filter
        assert (cfg.get("robust.pre-aggregator") == "nnm") == ("+nnm" in cell.aggregator)
    cclip_nnm = next(c for c in cells if c.aggregator == "cclip+nnm" and c.attack == "alie")
    command = flwr_run_command(cclip_nnm)
    assert "strategy='cclip'" in command and "robust.pre-aggregator='nnm'" in command
    assert "attack.kind='alie'" in command and "num-supernodes=20" in command


def _rows(values: dict[str, dict[str, float | None]]) -> list[dict]:
    return [
        {"partitioner": "iid", "attack": att, "aggregator": agg, "family": "ours",
         "accuracy": acc, "seconds": 1.0, "rejected_updates": 0, "warnings": {},
         "error": None if acc is not None else "ValueError: boom"}
        for agg, per_attack in values.items()
        for att, acc in per_attack.items()
    ]  # fmt: skip


def test_worst_case_drop_is_measured_against_clean_fedavg_and_sorted():
    rows = _rows({
        "fedavg": {"none": 0.95, "sign-flip": 0.60},
        "good": {"none": 0.94, "sign-flip": 0.93},
        "bad": {"none": 0.96, "sign-flip": 0.70},
        "crashy": {"none": 0.95, "sign-flip": None},
    })  # fmt: skip
    assert clean_reference(rows) == {"iid": 0.95}
    ranking = worst_case(rows)
    assert [w.aggregator for w in ranking] == ["good", "bad", "fedavg", "crashy"]
    good, bad, fedavg, crashy = ranking
    assert good.worst == pytest.approx(2.0) and good.holds
    assert good.worst_cell == ("iid", "sign-flip")
    assert bad.worst == pytest.approx(25.0) and not bad.holds
    assert fedavg.worst == pytest.approx(35.0)
    assert math.isinf(crashy.worst) and not crashy.holds
    table = markdown_matrix(rows, "iid")
    assert "| good | ours | **0.940** | **0.930** | +2.0 |" in table
    assert "| crashy | ours | **0.950** | error | crash |" in table


@pytest.fixture(scope="module")
def small_matrix(tmp_path_factory):
    """Four real federations of 6 silos, 1 round each, in this process: clean FedAvg,
    FedAvg and centred clipping under sign-flip, and our Bulyan, which needs n ≥ 4f + 3
    = 7 silos and must crash into its cell rather than abort the matrix."""
    aggs = [aggregator(a) for a in ("fedavg", "cclip", "robust-bulyan")]
    grid = plan(
        partitioners=["iid"], attacks=["none", "sign-flip"], aggregators=aggs, rounds=1,
        num_clients=6,
    )  # fmt: skip
    cells = [c for c in grid if c.attack == "sign-flip" or c.aggregator == "fedavg"]
    seen = []
    rows = run_matrix(cells, workers=1, on_row=seen.append)
    meta = describe(cells, workers=1, command="pytest")
    meta["complete"], meta["wall-seconds"] = True, sum(r["seconds"] for r in rows)
    return cells, rows, seen, meta, tmp_path_factory.mktemp("robust")


def test_cells_record_accuracy_norms_and_errors(small_matrix):
    cells, rows, seen, meta, _ = small_matrix
    assert [(r["attack"], r["aggregator"]) for r in rows] == [
        ("none", "fedavg"), ("sign-flip", "fedavg"), ("sign-flip", "cclip"),
        ("sign-flip", "robust-bulyan"),
    ]  # fmt: skip
    assert len(seen) == len(cells)  # on_row saw every row as it finished
    clean, fedavg, cclip, bulyan = rows
    for row in (clean, fedavg, cclip):
        assert row.keys() >= ROW_KEYS
        assert row["error"] is None and 0.0 <= row["accuracy"] <= 1.0
        assert len(row["accuracy_by_round"]) == 1
        assert row["accuracy_by_round"][0] == pytest.approx(row["accuracy"], abs=1e-4)
        assert row["rejected_updates"] == 0 and row["seconds"] > 0
        assert row["client_update_norm_median"] > 0
    # The probe sees the silos' own updates, before the server-side attack: round 1
    # starts from the same model, so clean and attacked FedAvg silos send the same.
    assert fedavg["client_update_norm_median"] == clean["client_update_norm_median"]
    # ... but the attack changed the aggregate, hence the global model.
    assert fedavg["loss"] != pytest.approx(clean["loss"], rel=1e-6)
    assert bulyan["accuracy"] is None
    assert "num_byzantine=1 is invalid for bulyan" in bulyan["error"]
    assert meta["byzantine-partitions"] and len(meta["byzantine-partitions"]) == 1
    assert meta["num-clients"] == 6 and meta["num-server-rounds"] == 1


def test_flower_logging_is_restored_after_inline_cells(small_matrix):
    flwr_log = logging.getLogger("flwr")
    assert flwr_log.propagate and flwr_log.handlers


def test_json_markdown_png_and_resume(small_matrix):
    _, rows, _, meta, out_dir = small_matrix
    out = out_dir / "robustness.md"
    write_outputs(rows, meta, out, final=True)

    data = json.loads(out.with_suffix(".json").read_text())
    assert len(data["rows"]) == 4 and all(r.keys() >= ROW_KEYS for r in data["rows"])
    assert data["clean_fedavg"] == {"iid": pytest.approx(rows[0]["accuracy"])}
    last = data["worst_case"][-1]
    assert last["aggregator"] == "robust-bulyan" and last["crashed"]
    assert last["worst_drop_points"] is None and not last["within_target"]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc = out.read_text()
    assert "### IID: final test accuracy" in doc
    assert "| aggregator | family | none | sign-flip | worst drop (pts) |" in doc
    fedavg_line = next(line for line in doc.splitlines() if line.startswith("| fedavg |"))
    assert f"{rows[1]['accuracy']:.3f}" in fedavg_line
    bulyan_line = next(line for line in doc.splitlines() if line.startswith("| robust-bulyan |"))
    assert "error" in bulyan_line and "crash" in bulyan_line
    assert "## Worst-case drop vs clean FedAvg" in doc and "robustness.png" in doc
    assert "Crashed cells:** robust-bulyan (ValueError)" in doc
    assert "Does plain FedAvg collapse?" in doc
    assert doc == render_markdown(rows, meta)  # rendering is a pure function of the rows

    resumed = load_resumable(out.with_suffix(".json"), meta)
    assert [r["aggregator"] for r in resumed] == ["fedavg", "fedavg", "cclip"]  # not the crash
    assert load_resumable(out.with_suffix(".json"), {**meta, "num-server-rounds": 2}) == []


def test_the_matrix_has_every_simulated_attack_and_the_simulations_inflation_factor():
    assert set(model_attacks()) | {"none", "label-flip"} == set(ATTACKS)
    assert bench.INFLATION_FACTOR == INFLATION_FACTOR


def test_rows_of_claim_weighted_rules_from_before_issue_16_are_marked():
    rows = _rows({
        "fedavg": {"none": 0.95, "sign-flip": 0.90, "weight-inflation": 0.10},
        "robust-median": {"none": 0.94, "sign-flip": 0.80, "weight-inflation": 0.80},
        "krum": {"none": 0.90, "sign-flip": 0.85, "weight-inflation": 0.85},
    })  # fmt: skip
    for r in rows:
        r["strategy"] = r["aggregator"]
        if r["attack"] != "sign-flip":  # the sign-flip cells predate the uniform default
            r["robust_weights"] = "uniform"
    table = markdown_matrix(rows, "iid")
    assert "| robust-median | ours | **0.940** | 0.800 ‡ | 0.800 |" in table
    assert "| krum | ours | 0.900 | 0.850 | 0.850 |" in table  # Krum never used weights
    meta = {"num-byzantine": 4, "num-clients": 20, "model-parameters": 100}
    text = "\n".join(discussion(rows, meta))
    assert "FedAvg weights by the claims and collapses: iid 0.100 (clean 0.950)" in text
    assert "**No robust configuration follows the inflating silos** (2 cells" in text
    # krum's two cells are comparable (current code); robust-median's sign-flip is not
    assert "Weight-inflation equals sign-flip in 1 of 1 cells" in text

    followed = [dict(r) for r in rows]
    for r in followed:  # a rule that collapses only when the claims are inflated
        if (r["aggregator"], r["attack"]) == ("krum", "weight-inflation"):
            r["accuracy"] = 0.2
    text = "\n".join(discussion(followed, meta))
    assert "(they follow the inflating silos): krum (iid 0.200, sign-flip 0.850)" in text

    # A merge that reruns robust-median's sign-flip keeps the claim-weighted row it
    # replaces, and the report prices uniform weights against it.
    base = {"rows": rows, "superseded_rows": []}
    wanted = {("iid", "sign-flip", "robust-median"), ("iid", "none", "krum")}
    [old] = bench.supersede(base, wanted)  # krum's row never depended on the claims
    assert (old["aggregator"], old["accuracy"]) == ("robust-median", 0.80)
    rerun = [dict(r) for r in rows]
    for r in rerun:
        if bench.row_key(r) == ("iid", "sign-flip", "robust-median"):
            r.update(accuracy=0.70, robust_weights="uniform")
    text = "\n".join(discussion(rerun, meta, [old]))
    assert "iid: 1 cells, median -10.0 pts, 1 lose more than 3" in text
    assert "robust-median under sign-flip (iid) 0.800 → 0.700" in text
    assert bench.supersede({"rows": rerun, "superseded_rows": [old]}, wanted) == [old]
    assert "**‡ = computed before issue #16** (1 cells)" in render_markdown(rows, meta)


def test_merge_adds_a_column_to_the_existing_json(small_matrix, monkeypatch):
    """``--merge`` runs only the selected cells (one real federation here) and renders
    the report from the earlier rows plus the new ones."""
    _, rows, _, meta, out_dir = small_matrix
    out = out_dir / "merge" / "robustness.md"
    write_outputs(rows, meta, out, final=True)
    before = json.loads(out.with_suffix(".json").read_text())
    monkeypatch.setattr(bench.signal, "signal", lambda *args: None)
    args = [
        "--merge",
        "--out",
        str(out),
        "--workers",
        "1",
        "--clients",
        "6",
        "--rounds",
        "1",
        "--partitioners",
        "iid",
        "--attacks",
        "weight-inflation",
        "--aggregators",
        "fedavg",
    ]
    assert bench.main(args) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    by_key = {bench.row_key(r): r for r in data["rows"]}
    for row in before["rows"]:  # the earlier rows as they were
        assert by_key.pop(bench.row_key(row)) == row
    [new] = by_key.values()
    assert (new["attack"], new["aggregator"], new["robust_weights"]) == (
        "weight-inflation",
        "fedavg",
        "uniform",
    )
    assert new["error"] is None and 0.0 <= new["accuracy"] <= 1.0
    merged = data["meta"]
    assert merged["cells"] == len(before["rows"]) + 1 and merged["base-cells"] == meta["cells"]
    assert merged["attacks"] == ["none", "sign-flip", "weight-inflation"]
    assert merged["merges"][0]["command"].endswith("--aggregators fedavg")
    assert merged["merges"][0]["complete"] and merged["merges"][0]["cells"] == 1
    doc = out.read_text()
    assert "| aggregator | family | none | sign-flip | weight-inflation | worst drop" in doc
    assert "--attacks weight-inflation --aggregators fedavg` ran 1 federations" in doc
    code = merged["merges"][0]["code"]
    if code["uncommitted"]:
        assert "commit: see git log" in doc

    with pytest.raises(SystemExit, match="needs the same settings"):
        bench.main([*args[:-6], "--rounds", "2", "--partitioners", "iid", "--attacks",
                    "weight-inflation", "--aggregators", "fedavg"])  # fmt: skip


def test_a_regenerated_doc_keeps_its_hand_written_part(tmp_path):
    doc = tmp_path / "robustness.md"
    kept_part = f"{bench.KEPT_START}\n## Honest silos\nmeasured\n{bench.KEPT_END}"
    doc.write_text(f"# old table\n\n{kept_part}\n")
    kept = bench.kept_section(doc)
    assert kept.strip() == kept_part
    assert bench.kept_section(tmp_path / "absent.md") == ""
