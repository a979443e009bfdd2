"""The robustness sweep of ``benchmarks.robust --sweep``: its plan (rules, infeasible
cells), the schedule (references, pilot, strongest attacks first, breadth first, second
seeds), pruning of decided cells, resume, and the outputs. Rows are made up here (no
federation runs); one real cell checks that a row has what the analysis reads. The sweep
itself is ``python -m benchmarks.robust --sweep``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import robust as matrix
from benchmarks import robust_sweep as sw
from benchmarks.robust_sweep import SEEDS, Plan, SweepCell
from strategies.registry import STRATEGIES
from strategies.robust import collapse, defaults


@pytest.fixture(scope="module")
def plan() -> Plan:
    return Plan(sw.rules())


def fake(cell: SweepCell, acc: float | None) -> dict:
    """A row as :func:`sw.run_one` writes it (the fields the analysis reads)."""
    return {
        "fraction": cell.fraction, "skew": cell.skew, "attack": cell.attack,
        "aggregator": cell.rule, "seed": cell.seed, "accuracy": acc,
        "error": None if acc is not None else "RuntimeError: boom", "seconds": 1.0,
        "cpu_seconds": 1.0,
    }  # fmt: skip


def test_rules_are_fedavg_and_every_robust_strategy_plain_with_nnm_and_bucketing(plan):
    labels = [r.label for r in plan.rules]
    assert labels[0] == "fedavg"
    for name in STRATEGIES.names(family="robust"):
        assert name in labels
    for ours in ("robust-median", "cclip", "geomed", "fltrust"):
        assert f"{ours}+nnm" in labels and f"{ours}+bucketing" in labels
    # Flower's strategies take no pre-aggregator: plain only.
    assert "krum+nnm" not in labels and "fedmedian+bucketing" not in labels
    rule = plan.by_label["cclip+bucketing"]
    cfg = sw.run_config(SweepCell(0.3, "α=0.1", "ipm ε=10", rule.label), rule, rounds=6,
                        local_epochs=2)  # fmt: skip
    assert cfg["robust.pre-aggregator"] == "bucketing" and cfg["robust.bucket-size"] == 2
    assert cfg["robust.num-byzantine"] == 6 and cfg["attack.fraction"] == 0.3
    assert (cfg["attack.kind"], cfg["attack.strength"]) == ("ipm", 10.0)
    assert (cfg["data.partitioner"], cfg["data.dirichlet-alpha"]) == ("dirichlet", 0.1)
    assert matrix.resolve_config(cfg).robust.pre_aggregator == "bucketing"


def test_the_variants_sweep_the_issues_strengths_and_every_simulated_attack():
    from strategies.robust.simulation import ATTACKS

    kinds = {v.kind for v in sw.VARIANTS}
    assert kinds == {"none", *ATTACKS.names()}
    strengths = {(v.kind, v.strength) for v in sw.VARIANTS}
    for eps in (0.1, 0.5, 1.0, 10.0):
        assert ("ipm", eps) in strengths
    assert {("alie", 0.0), ("alie", 1.0), ("alie", 2.0)} <= strengths
    assert {("scaling", 10.0), ("scaling", 100.0)} <= strengths


def test_infeasible_cells_are_the_rules_own_refusals(plan):
    inf = plan.infeasible
    assert "4*num_byzantine + 3" in inf[(0.3, "robust-bulyan")]
    assert (0.2, "robust-bulyan") not in inf  # n = 20 ≥ 4·4 + 3
    assert (0.3, "bulyan") in inf  # Flower's Bulyan: asked through ours
    # Behind bucketing (s = 2) a rule sees 10 inputs: Krum needs 10 > 2f + 2.
    assert (0.1, "robust-krum+bucketing") not in inf
    assert (0.2, "robust-krum+bucketing") in inf
    assert not any(r == "fedavg" or r.startswith("cclip") for _, r in inf)
    cov = sw.coverage(plan, [])
    per_pair = len(plan.skews) * len(plan.variants)
    assert cov["infeasible"] == len(inf) * per_pair
    assert cov["planned"] + cov["infeasible"] == len(plan.rules) * 4 * per_pair
    assert cov["not-reached"] == cov["planned"] and not cov["complete"]


def test_schedule_starts_with_the_clean_references_then_the_pilot(plan):
    cells = sw.next_cells(plan, [], limit=200)
    refs = cells[:4]
    assert {(c.attack, c.rule) for c in refs} == {("none", "fedavg")}
    assert [c.skew for c in refs] == list(sw.SKEWS)
    pilot = cells[4 : 4 + len(plan.pilot())]
    assert {(c.fraction, c.skew) for c in pilot} == {sw.PILOT_SETTING}
    assert {c.rule for c in pilot} == set(sw.PILOT_RULES)
    assert "none" not in {c.attack for c in pilot}
    assert len({c.key for c in cells}) == len(cells)


def _after_pilot(plan, acc_of=lambda cell: 0.8) -> list[dict]:
    return [fake(c, acc_of(c)) for c in (*plan.references(), *plan.pilot())]


def test_attacks_are_ordered_strongest_first_by_the_pilot(plan):
    weak = {"ipm ε=10": 0.1, "scaling ×100": 0.3}
    rows = _after_pilot(plan, lambda c: weak.get(c.attack, 0.8))
    order = sw.attack_order(plan, rows)
    assert order[:2] == ["ipm ε=10", "scaling ×100"]
    assert order[-1] == "none"
    assert sorted(order) == sorted(plan.variants)
    # Breadth first: the next cells are the strongest attack of distinct groups.
    nxt = sw.next_cells(plan, rows, limit=30)
    assert len({c.group for c in nxt}) == 30
    assert {c.attack for c in nxt} == {"ipm ε=10"}
    # The clean reference (attack none) does not count as a pass over its group.
    first_pass = sw.next_cells(plan, rows, limit=len(plan.groups()) - 10)
    assert (0.1, "iid", "fedavg") in {c.group for c in first_pass}


def test_a_collapsed_group_is_decided_and_its_other_attacks_pruned(plan):
    rows = _after_pilot(plan, lambda c: 0.8)
    broken = SweepCell(0.4, "α=0.1", "min-sum", "geomed")
    rows.append(fake(broken, 0.1))
    st = sw.state(rows)
    assert st.decided == {broken.group: "min-sum"}
    nxt = sw.next_cells(plan, rows, limit=len(plan.groups()) * 3)
    assert broken.group not in {c.group for c in nxt}
    # The attack that collapsed geomed goes first in its other groups.
    geomed = [c for c in nxt if c.rule == "geomed" and c.seed == SEEDS[0]]
    assert geomed and all(
        c.attack == "min-sum" for c in geomed if sw.state(rows).by_group.get(c.group) is None
    )
    cov = sw.coverage(plan, rows)
    assert cov["pruned"] == len(plan.variants) - 1
    assert cov["decided-groups"] == 1


def test_each_rules_worst_cell_gets_a_second_seed_after_its_first_pass(plan):
    rows = _after_pilot(plan, lambda c: 0.8)
    order = sw.attack_order(plan, rows)
    first = sw.next_cells(plan, rows, limit=10**5)
    assert all(c.seed == SEEDS[0] for c in first)
    # One cell in every group: a full pass; geomed's worst is 0.5, cclip's is at chance.
    for c in first:
        if c.attack == order[0] and c.group not in {x.group for x in plan.pilot()}:
            rows.append(fake(c, 0.5 if c.rule == "geomed" and c.fraction == 0.4 else 0.7))
    worst_cclip = SweepCell(0.1, "iid", order[0], "cclip")
    rows = [r for r in rows if sw.row_key(r) != worst_cclip.key] + [fake(worst_cclip, 0.1)]
    nxt = sw.next_cells(plan, rows, limit=200)
    second = [c for c in nxt if c.seed == SEEDS[1]]
    assert second and nxt[: len(second)] == second  # before the second pass
    by_rule = {c.rule: c for c in second}
    assert by_rule["geomed"].fraction == 0.4
    assert by_rule["cclip"] == SweepCell(0.1, "iid", order[0], "cclip", SEEDS[1])
    # A rule gets its second seed once all its groups ran, before the others have.
    unfinished = [r for r in rows if not (r["aggregator"] == "krum" and r["fraction"] == 0.1)]
    rules = {c.rule for c in sw.next_cells(plan, unfinished, limit=200) if c.seed == SEEDS[1]}
    assert "geomed" in rules and "krum" not in rules


def test_sweep_runs_until_the_budget_and_resume_continues_without_repeats(plan, tmp_path):
    ran: list[SweepCell] = []
    clock = iter(range(10**6))

    def run(cell):
        ran.append(cell)
        return fake(cell, 0.1 if cell.attack == "scaling ×100" else 0.9)

    rows: list[dict] = []
    assert not sw.sweep(plan, rows, run=run, budget=30, clock=lambda: next(clock))
    assert len(rows) == len(ran) == 30
    meta = sw.base_meta("python -m benchmarks.robust --sweep", {"commit": "abc"}, 6, 2)
    meta["sessions"] = [{"wall-seconds": 12.0, "cells": 30}]
    sw.write_outputs([*rows, fake(SweepCell(0.1, "iid", "gaussian", "krum"), None)], meta,
                     plan, tmp_path / "robustness.md", final=False)  # fmt: skip
    again, sessions = sw.load_resumable(tmp_path / sw.JSON_NAME, meta)
    assert len(again) == 30 and sessions == meta["sessions"]  # the crashed row is rerun
    other = {**meta, "num-server-rounds": 8}
    assert sw.load_resumable(tmp_path / sw.JSON_NAME, other) == ([], [])
    clock = iter(range(10**6))
    sw.sweep(plan, again, run=run, budget=20, clock=lambda: next(clock))
    keys = [sw.row_key(r) for r in again]
    assert len(keys) == len(set(keys)) == 50


def test_collapse_conditions_keep_only_the_weakest_condition_per_rule():
    rows = [
        fake(SweepCell(0.2, "α=0.1", "ipm ε=10", "geomed"), 0.1),
        fake(SweepCell(0.3, "α=0.1", "ipm ε=10", "geomed"), 0.1),  # implied by the first
        fake(SweepCell(0.4, "iid", "min-max", "geomed"), 0.12),
        fake(SweepCell(0.4, "α=1.0", "alie", "geomed+nnm"), 0.5),  # held
        fake(SweepCell(0.1, "iid", "scaling ×100", "fedavg"), 0.1),  # the reference: no entry
    ]
    conds = sw.collapse_conditions(rows)
    assert conds == [
        {"strategy": "geomed", "pre_aggregator": "none", "min_fraction": 0.2,
         "max_alpha": 0.1, "attack": "ipm ε=10"},
        {"strategy": "geomed", "pre_aggregator": "none", "min_fraction": 0.4,
         "max_alpha": None, "attack": "min-max"},
    ]  # fmt: skip


def test_the_code_table_of_collapses_is_the_sweeps():
    docs = Path(__file__).resolve().parents[2] / "docs"
    data = json.loads((docs / sw.JSON_NAME).read_text())
    table = [
        {"strategy": c.strategy, "pre_aggregator": c.pre_aggregator,
         "min_fraction": c.min_fraction, "max_alpha": c.max_alpha, "attack": c.attack}
        for c in collapse.COLLAPSES
    ]  # fmt: skip
    assert table == data["collapse_conditions"]


def test_the_code_table_of_auto_pre_aggregators_is_the_sweeps():
    docs = Path(__file__).resolve().parents[2] / "docs"
    data = json.loads((docs / sw.JSON_NAME).read_text())
    assert data["auto_pre_aggregator"] == defaults.AUTO
    # Every rule the sweep runs behind a pre-aggregator has a measured choice.
    assert set(defaults.AUTO) == {r.strategy for r in sw.rules() if r.pre != "none"}


def test_auto_picks_the_best_mean_worst_case_and_only_a_pre_aggregator_that_runs_everywhere():
    small = Plan([sw.Rule("geomed", "geomed"), sw.Rule("geomed+nnm", "geomed", "nnm"),
                  sw.Rule("geomed+bucketing", "geomed", "bucketing"),
                  sw.Rule("cclip", "cclip"), sw.Rule("cclip+nnm", "cclip", "nnm")],
                 fractions=(0.1, 0.2), skews=("iid", "α=0.1"))  # fmt: skip
    acc = {"geomed": 0.5, "geomed+nnm": 0.6, "geomed+bucketing": 0.9, "cclip": 0.4,
           "cclip+nnm": 0.4}  # fmt: skip
    rows = []
    for f in small.fractions:
        for s in small.skews:
            for rule, a in acc.items():
                if rule == "geomed+bucketing" and (f, s) == (0.2, "α=0.1"):
                    continue  # refused there (say): no candidate despite its 0.9 elsewhere
                # Two attacks: the worst case is the lower one.
                rows += [fake(SweepCell(f, s, "ipm ε=10", rule), a),
                         fake(SweepCell(f, s, "alie", rule), a + 0.05)]  # fmt: skip
    # A lower worst case of the plain geomed in one setting moves its mean.
    rows.append(fake(SweepCell(0.2, "iid", "min-max", "geomed"), 0.1))
    auto = sw.auto_pre_aggregator(rows, small)
    assert auto["geomed"] == {
        "choice": "nnm",
        "settings": 4,
        "mean_worst": {"none": pytest.approx(0.4), "nnm": 0.6},
    }
    assert auto["cclip"]["choice"] == "none"  # a tie goes to the simpler
    text = "\n".join(sw._auto_section(rows, small, auto))
    assert "| geomed | 4 | 0.40 | 0.60 | – | **nnm** |" in text
    # The recommendation table's run config names the pre-aggregator only against 'auto'.
    hint = sw.run_config_hint
    assert hint(small.by_label["geomed+nnm"], auto) == "`strategy='geomed'`"
    assert hint(small.by_label["geomed"], auto) == (
        "`strategy='geomed'` `robust.pre-aggregator='none'`"
    )
    assert hint(small.by_label["cclip"], auto) == "`strategy='cclip'`"
    assert hint(sw.Rule("krum", "krum"), auto) == "`strategy='krum'`"


def test_outputs_keep_the_rest_of_the_doc_and_end_with_the_recommendation_table(plan, tmp_path):
    doc = tmp_path / "robustness.md"
    kept = f"{matrix.KEPT_START}\n## Honest silos\nmeasured\n{matrix.KEPT_END}"
    doc.write_text(f"# matrix\n\ntable\n\n{kept}\n")
    rows = _after_pilot(plan, lambda c: 0.1 if c.rule == "robust-median" else 0.7)
    rows += [fake(SweepCell(0.2, "α=0.3", a, "fltrust"), 0.8) for a in plan.variants]
    rows.append(fake(SweepCell(0.2, "α=0.3", "ipm ε=10", "geomed"), 0.9))  # one attack only
    meta = sw.base_meta("python -m benchmarks.robust --sweep", {"commit": "abc"}, 6, 2)
    meta["sessions"] = [{"wall-seconds": 60.0, "cells": len(rows)}]
    sw.write_outputs(rows, meta, plan, doc, final=True)
    text = doc.read_text()
    assert text.startswith("# matrix") and kept in text
    body = text.split(sw.MARK_START, 1)[1]
    assert "**The sweep is incomplete**" in body
    assert "## Which rule for which threat" in body
    assert body.index("### The default pre-aggregator") < body.index("## Which rule for")
    assert body.rstrip().endswith(sw.MARK_END)
    assert (tmp_path / "robustness-sweep-f20.png").stat().st_size > 0
    data = json.loads((tmp_path / sw.JSON_NAME).read_text())
    worst = {w["rule"]: w for w in data["worst_per_rule"]}
    assert worst["robust-median"]["accuracy"] == pytest.approx(0.1)
    recs = {(r["fraction"], r["skew"], r["root_data"]): r for r in data["recommendations"]}
    assert recs[(0.2, "α=0.3", True)]["rule"] == "fltrust"
    assert recs[(0.2, "α=0.3", False)]["rule"] == "cclip"
    # A setting where the best rule is at chance says that no rule holds there.
    line = next(x for x in body.splitlines() if x.startswith("| 20 % | α=0.3 | no |"))
    assert recs[(0.2, "α=0.3", False)]["worst"] == pytest.approx(0.7)
    assert "| cclip | `strategy='cclip'` |" in line and "none holds" not in line
    low = [{**r, "accuracy": 0.1} if r["aggregator"] != "fltrust" else r for r in rows]
    body = sw.render_markdown(low, meta, plan, doc).split("## Which rule for which threat")[1]
    line = next(x for x in body.splitlines() if x.startswith("| 20 % | α=0.3 | no |"))
    assert "| **none holds** (best: " in line and "| – |" in line
    # Regenerating the matrix keeps the sweep's part (and the hand-written one).
    assert matrix.kept_section(doc, sw.MARK_START, sw.MARK_END).strip().startswith(sw.MARK_START)
    # A second render replaces the sweep's part, once.
    sw.write_outputs(rows, meta, plan, doc, final=True)
    assert doc.read_text().count(sw.MARK_START) == 1


def test_one_real_cell_row_has_what_the_analysis_reads(plan):
    cell = SweepCell(0.1, "iid", "ipm ε=10", "cclip+nnm")
    with matrix.quiet_process():
        row = sw.run_one((cell, plan.by_label[cell.rule], 1, 1, 6))
    assert row["error"] is None, row["error"]
    assert sw.row_key(row) == cell.key
    assert 0.0 <= row["accuracy"] <= 1.0 and not math.isnan(row["accuracy"])
    assert (row["attack_kind"], row["attack_strength"], row["pre_aggregator"]) == (
        "ipm", 10.0, "nnm")  # fmt: skip
    assert row["num_byzantine"] == 1  # 10 % of 6 silos
