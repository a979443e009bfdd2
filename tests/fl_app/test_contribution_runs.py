"""Contribution scores in real runs (the ServerApp body and ClientApp on the in-process
grid): a silo with 60 % flipped labels scores last, reruns and resumed runs score the same,
the scores reach every output, and quality weights turn the noisy silo down."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from fl_app.audit import read_audit_log
from fl_app.client_app import app as client_app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.heterogeneity import noisy_partitions
from fl_app.inprocess import InProcessGrid
from fl_app.sinks import is_runtime_metric
from fl_core.errors import ConfigError

SILOS = 6
BASE = {
    "task": "breast-cancer",
    "seed": 2,
    "num-server-rounds": 3,
    "training.local-epochs": 1,
    "sampling.fraction-evaluate": 0.0,
    "sampling.min-evaluate-nodes": 0,
    "sampling.min-available-nodes": SILOS,
    "simulation.noisy-silos": 1,
    "simulation.label-noise": 0.6,
}


def _cfg(tmp: Path, **overrides) -> RunConfig:
    return RunConfig.from_flower({**BASE, "output.run-dir": str(tmp), **overrides})


def _run(cfg: RunConfig, extra_sinks=()) -> Path:
    _, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), SILOS), cfg, extra_sinks)
    return run_dir


def _table(run_dir: Path) -> list[dict]:
    with (run_dir / "contributions.csv").open() as fh:
        return list(csv.DictReader(fh))


def _model_rows(run_dir: Path) -> list[dict]:
    rows = json.loads((run_dir / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if not is_runtime_metric(k)} for r in rows]


def test_the_noisy_silo_scores_last_and_a_rerun_scores_the_same(tmp_path):
    cfg = _cfg(tmp_path, **{"contribution.method": "both"})
    (noisy,) = noisy_partitions(cfg.simulation, SILOS, cfg.seed)
    run_dir = _run(cfg)
    table = _table(run_dir)
    assert [int(r["partition-id"]) for r in table] == list(range(SILOS))
    assert all(int(r["rounds"]) == 3 for r in table)
    for key in ("loo", "shapley"):
        scores = {int(r["partition-id"]): float(r[key]) for r in table}
        assert min(scores, key=scores.get) == noisy, (key, scores)
        assert scores[noisy] < 0  # it made the model worse
    assert {int(r["partition-id"]): int(r["rank"]) for r in table}[noisy] == SILOS
    assert (run_dir / "contributions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Per round and silo in silo_metrics.json, the totals in metrics.json and the audit log.
    silo_rows = [
        r for r in json.loads((run_dir / "silo_metrics.json").read_text())
        if r["phase"] == "contribution"
    ]  # fmt: skip
    assert len(silo_rows) == 3 * SILOS
    for r in table:
        pid = int(r["partition-id"])
        per_round = [s["shapley"] for s in silo_rows if s["partition-id"] == pid]
        assert sum(per_round) == pytest.approx(float(r["shapley"]))
    (final,) = [r for r in json.loads((run_dir / "metrics.json").read_text())
                if r["phase"] == "contribution"]  # fmt: skip
    assert final["round"] == 3 and final[f"shapley-{noisy}"] == pytest.approx(
        float(table[noisy]["shapley"])
    )
    audit = read_audit_log(run_dir / "audit.jsonl")
    assert [e["round"] for e in audit if e["event"] == "contribution"] == [1, 2, 3]
    summary = next(e for e in audit if e["event"] == "contributions")
    assert summary["silos"][str(noisy)]["rank"] == SILOS
    # The GTG budget: ≤ 2 + 50 × 5 evaluations, and at most 2^6 subsets.
    rows = json.loads((run_dir / "metrics.json").read_text())
    trains = [r for r in rows if r["phase"] == "train"]
    assert all(0 < r["contribution-evaluations"] <= 2**SILOS for r in trains)

    again = _run(_cfg(tmp_path / "again", **{"contribution.method": "both"}))
    assert _table(again) == table
    png = (run_dir / "contributions.png").read_bytes()
    assert (again / "contributions.png").read_bytes() == png


@pytest.mark.parametrize("strategy", ["fedavg", "robust-trimmed-mean"])
def test_scoring_alone_leaves_the_run_unchanged(tmp_path, strategy):
    # robust-trimmed-mean reads the round's matrix the validation decoded, which the
    # scoring reads first: it must still aggregate the same rows.
    plain = _run(_cfg(tmp_path / "plain", strategy=strategy))
    scored = _run(
        _cfg(tmp_path / "scored", strategy=strategy, **{"contribution.method": "gtg-shapley"})
    )
    a = torch.load(plain / "model.pt", weights_only=True)
    b = torch.load(scored / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    extra = {"contribution-evaluations"}
    rows = [
        {k: v for k, v in r.items() if k not in extra}
        for r in _model_rows(scored) if r["phase"] != "contribution"
    ]  # fmt: skip
    assert rows == _model_rows(plain)
    assert not (plain / "contributions.csv").exists()


def test_quality_weights_turn_the_noisy_silo_down_within_the_cap(tmp_path):
    settings = {
        "contribution.method": "gtg-shapley",
        "contribution.quality-weights": True,
        "contribution.weight-cap": 1.5,
    }
    cfg = _cfg(tmp_path, **settings)
    (noisy,) = noisy_partitions(cfg.simulation, SILOS, cfg.seed)
    weighted = _run(cfg)
    plain = _run(_cfg(tmp_path / "plain", **{"contribution.method": "gtg-shapley"}))
    rows = [
        r for r in json.loads((weighted / "silo_metrics.json").read_text())
        if r["phase"] == "contribution"
    ]  # fmt: skip
    for rnd in (1, 2, 3):
        weights = {r["partition-id"]: r["weight"] for r in rows if r["round"] == rnd}
        mean = sum(weights.values()) / len(weights)
        assert min(weights, key=weights.get) == noisy
        assert max(weights.values()) <= 1.5 * mean + 1e-9
    # The claims stay the claims in every output; the model differs.
    claims = [[r["num-examples"] for r in _model_rows(d) if r["phase"] == "train"]
              for d in (weighted, plain)]  # fmt: skip
    assert claims[0] == claims[1]
    a = torch.load(weighted / "model.pt", weights_only=True)
    b = torch.load(plain / "model.pt", weights_only=True)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_run_scores_as_the_uninterrupted_one(tmp_path, snapshot_sink):
    snapshot = tmp_path / "snapshot"
    settings = {"contribution.method": "both", "contribution.quality-weights": True}
    run_dir = _run(
        _cfg(tmp_path / "runs", **settings), (snapshot_sink(tmp_path / "runs", snapshot),)
    )
    assert not (snapshot / "contributions.csv").exists()
    resume = {"output.resume": True, "output.resume-from": str(snapshot)}
    resumed = _cfg(tmp_path / "elsewhere", **settings, **resume)
    _run(resumed)
    assert _table(snapshot) == _table(run_dir)
    a = torch.load(run_dir / "model.pt", weights_only=True)
    b = torch.load(snapshot / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"contribution.quality-weights": True}, "computes none"),
        (
            {
                "contribution.method": "loo",
                "secagg.enabled": True,
                "robust.max-update-norm-ratio": 0.0,
            },
            "hides each silo's update",
        ),
        (
            {"contribution.method": "loo", "dp.central": True, "robust.max-update-norm-ratio": 0.0},
            "central DP",
        ),
        (
            {
                "contribution.method": "loo",
                "contribution.quality-weights": True,
                "strategy": "krum",
            },
            "robust rules already decide whom to trust",
        ),
        (
            {
                "contribution.method": "loo",
                "contribution.quality-weights": True,
                "strategy": "qfedavg",
            },
            "would undo its fairness objective",
        ),
        ({"selection.policy": "oort", "selection.quality-aware": True}, "computes none"),
        (
            {"contribution.method": "loo", "selection.quality-aware": True},
            "policy 'random' does not rank by",
        ),
    ],
)
def test_unsound_combinations_are_refused_with_the_reason(tmp_path, overrides, reason):
    with pytest.raises(ConfigError, match=reason):
        _cfg(tmp_path, **overrides)
    if overrides.get("strategy") == "krum":  # scoring alone is fine with a robust rule
        _cfg(tmp_path, strategy="krum", **{"contribution.method": "loo"})


@pytest.mark.parametrize("policy", ["oort", "power-of-choice"])
def test_quality_aware_selection_stops_choosing_the_noisy_silo(tmp_path, policy):
    """A loss-driven policy keeps choosing the noisy silo (its loss stays high); with
    ``selection.quality-aware`` its negative contribution score takes it off the roster
    after it has been scored."""
    settings = {
        "num-server-rounds": 6,
        "selection.policy": policy,
        "sampling.fraction-train": 0.5,
        "sampling.min-train-nodes": 1,
        "contribution.method": "loo",
    }
    (noisy,) = noisy_partitions(_cfg(tmp_path).simulation, SILOS, 2)
    chosen = {}
    for aware in (False, True):
        cfg = _cfg(tmp_path / str(aware), **settings, **{"selection.quality-aware": aware})
        run_dir = _run(cfg)
        rounds = [e["round"] for e in read_audit_log(run_dir / "audit.jsonl")
                  if e["event"] == "selection" and noisy in e["partitions"]]  # fmt: skip
        chosen[aware] = rounds
    assert len(chosen[False]) >= 4, chosen  # loss-driven: the noisy silo most rounds
    assert len(chosen[True]) <= 2 and chosen[True] == chosen[False][: len(chosen[True])], chosen
