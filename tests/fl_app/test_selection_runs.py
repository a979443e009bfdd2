"""Participant selection in real runs (the ServerApp body and ClientApp on the in-process
grid): every round's choice and its reasons reach the audit log and the per-silo metrics,
and the policies react to what the silos do."""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from pathlib import Path

from fl_app.audit import read_audit_log
from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid

BASE = {
    "task": "breast-cancer",
    "num-server-rounds": 4,
    "training.local-epochs": 1,
    "sampling.fraction-evaluate": 0.0,
    "sampling.min-evaluate-nodes": 0,
    "sampling.min-train-nodes": 1,
    "sampling.min-available-nodes": 8,
}


def _run(tmp: Path, silos: int = 8, node_configs=None, **overrides):
    cfg = RunConfig.from_flower({**BASE, "output.run-dir": str(tmp), **overrides})
    grid = InProcessGrid(client_app, cfg.to_flower(), silos, node_configs=node_configs)
    _, run_dir = run_federation(grid, cfg)
    audit = read_audit_log(run_dir / "audit.jsonl")
    silo_rows = json.loads((run_dir / "silo_metrics.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return audit, silo_rows, metrics


def test_oort_logs_each_rounds_choice_with_reasons_and_per_silo_metrics(tmp_path):
    audit, silo_rows, metrics = _run(
        tmp_path,
        **{"selection.policy": "oort", "sampling.fraction-train": 0.25,
           "simulation.speed-spread": 10.0},
    )  # fmt: skip
    selections = [e for e in audit if e["event"] == "selection"]
    trains = {e["round"]: e for e in audit if e["event"] == "train"}
    assert [s["round"] for s in selections] == [1, 2, 3, 4]
    for s in selections:
        assert len(s["partitions"]) == 2  # 25 % of 8
        assert set(s["reasons"]) == {str(p) for p in s["partitions"]}
        # The silos that trained are the ones chosen.
        assert sorted(u["partition-id"] for u in trains[s["round"]]["updates"]) == s["partitions"]
    # Rounds 1-3 explore (ε = 0.9 · 0.98^r): 6 distinct silos tried, each said so.
    tried = [p for s in selections[:3] for p in s["partitions"]]
    assert len(set(tried)) == 6
    assert all("explore: never tried" in r for s in selections[:3] for r in s["reasons"].values())
    rows = [r for r in silo_rows if r["phase"] == "selection"]
    assert len(rows) == 4 * 8  # every silo, every round: selected or not
    for s in selections:
        chosen = {
            r["partition-id"] for r in rows if r["round"] == s["round"] and r["selected"] == 1
        }
        assert chosen == set(s["partitions"])
    # The simulated round time is the slowest chosen silo's.
    trained = [r for r in silo_rows if r["phase"] == "train"]
    for row in (r for r in metrics if r["phase"] == "train"):
        slowest = max(t["sim-seconds"] for t in trained if t["round"] == row["round"])
        assert row["round-sim-seconds"] == slowest


def test_availability_backs_off_a_silo_that_keeps_failing(tmp_path):
    # Silo 3 always dies mid-round (its node config); the others always answer.
    node_configs = [{"dropout": 1.0} if p == 3 else {} for p in range(8)]
    audit, _, _ = _run(
        tmp_path,
        node_configs=node_configs,
        **{"selection.policy": "availability", "sampling.fraction-train": 0.5,
           "num-server-rounds": 8},
    )  # fmt: skip
    selections = [e for e in audit if e["event"] == "selection"]
    chosen = Counter(p for s in selections for p in s["partitions"])
    # After its k-th failure in a row silo 3 sits out 2^(k-1) rounds (it is never needed to
    # fill a round: 7 others are ready), and it is chosen less often than the others.
    rounds = [s["round"] for s in selections if 3 in s["partitions"]]
    assert len(rounds) >= 2
    for k, (a, b) in enumerate(itertools.pairwise(rounds), start=1):
        assert b - a >= 2 ** (k - 1) + 1, rounds
    others = [chosen[p] for p in range(8) if p != 3]
    assert chosen[3] < sum(others) / len(others)
    trains = [e for e in audit if e["event"] == "train"]
    assert all(3 not in [u["partition-id"] for u in t["updates"]] for t in trains)


def test_random_selection_is_flowers_sampling_recorded(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="flwr")
    audit, _, _ = _run(tmp_path, **{"sampling.fraction-train": 0.5})
    selections = {e["round"]: e for e in audit if e["event"] == "selection"}
    for train in (e for e in audit if e["event"] == "train"):
        picked = sorted(u["partition-id"] for u in train["updates"])
        assert picked == selections[train["round"]]["partitions"]
        assert set(selections[train["round"]]["reasons"].values()) == {"uniform random"}
    # One console line a round; a uniform draw has no per-silo scores to show.
    for rnd, chosen in selections.items():
        ids = " ".join(map(str, chosen["partitions"]))
        assert f"[fedsilo] round {rnd} selection: 4 of 8 silos {ids}" in caplog.messages
