"""Personalisation in real runs (the ServerApp body and the ClientApp on the in-process
grid): every method reports its personal metrics and their fairness summary, the methods
that send nothing personal leave the global model bit-identical, personal models serve
skewed silos better, the personal state survives a SIGKILL and resume bit for bit, and
unsound combinations are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fl_app.client_app import app as client_app
from fl_app.config import ConfigError, RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid

ROOT = Path(__file__).resolve().parents[2]
SILOS = 4
BASE = {
    "task": "digits",
    "num-server-rounds": 2,
    "training.local-epochs": 1,
    "data.partitioner": "dirichlet",
    "data.dirichlet-alpha": 0.3,
    "sampling.min-available-nodes": SILOS,
}


def _run(tmp: Path, silos: int = SILOS, **settings) -> Path:
    cfg = RunConfig.from_flower({**BASE, "output.run-dir": str(tmp), **settings})
    _, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), silos), cfg)
    return run_dir


def _rows(run_dir: Path, name: str = "metrics.json") -> list[dict]:
    return json.loads((run_dir / name).read_text())


def _evaluate(run_dir: Path) -> dict[int, dict]:
    return {r["round"]: r for r in _rows(run_dir) if r["phase"] == "evaluate"}


def _model(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


def _same_model(a: Path, b: Path) -> bool:
    ma, mb = _model(a), _model(b)
    return ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.mark.parametrize(
    ("method", "task"),
    [("finetune", "digits"), ("fedper", "digits"), ("fedrep", "digits"),
     ("fedbn", "digits-bn"), ("ditto", "digits")],
)  # fmt: skip
def test_each_method_reports_personal_metrics_and_their_fairness(tmp_path, method, task):
    run_dir = _run(tmp_path, task=task, **{"personalization.method": method})
    silos = [r for r in _rows(run_dir, "silo_metrics.json") if r["phase"] == "evaluate"]
    assert len(silos) == 2 * SILOS
    assert all({"accuracy", "personal-accuracy", "personal-loss"} <= r.keys() for r in silos)
    # The personal model is not the global one for some silo.
    assert any(r["personal-accuracy"] != r["accuracy"] for r in silos)
    for rnd, row in _evaluate(run_dir).items():
        personal = [r["personal-accuracy"] for r in silos if r["round"] == rnd]
        assert row["silo-personal-accuracy-silos"] == SILOS
        assert row["silo-personal-accuracy-min"] == pytest.approx(min(personal))
        assert row["silo-personal-accuracy-mean"] == pytest.approx(sum(personal) / SILOS)
        assert 0 < row["silo-personal-accuracy-jain"] <= 1
        assert "silo-accuracy-min" in row  # the global model's summary stays
        assert "personal-accuracy" in row  # and the example-weighted mean


def test_ditto_and_finetune_send_exactly_what_no_personalisation_sends(tmp_path):
    """Neither method puts anything personal into a reply: the global model and its
    metrics are bit-identical to the run without personalisation (same seed)."""
    plain = _run(tmp_path / "none")
    for method in ("ditto", "finetune"):
        run_dir = _run(tmp_path / method, **{"personalization.method": method})
        assert _same_model(run_dir, plain), method
        for rnd, row in _evaluate(run_dir).items():
            assert row["silo-accuracy-min"] == _evaluate(plain)[rnd]["silo-accuracy-min"]


def test_personal_models_serve_skewed_silos_better(tmp_path):
    """Digits, 8 silos, Dirichlet α = 0.1, 3 rounds of 1 epoch. Measured over seeds 1–4
    (docs/personalization.md): every method's personal mean beat the global mean by more
    than 0.1 in all 16 runs; FedRep's personal worst silo was ≥ the global worst in all 4
    seeds (strictly in 3; in the 4th both were 0). Asserted here for seed 3."""
    settings = {"seed": 3, "num-server-rounds": 3, "data.dirichlet-alpha": 0.1,
                "sampling.min-available-nodes": 8}  # fmt: skip
    for method in ("fedrep", "ditto", "fedper", "finetune"):
        last = _evaluate(_run(tmp_path / method, 8, **settings,
                              **{"personalization.method": method}))[3]  # fmt: skip
        assert last["silo-personal-accuracy-mean"] > last["silo-accuracy-mean"] + 0.1, method
        if method == "fedrep":
            assert last["silo-personal-accuracy-min"] > last["silo-accuracy-min"] + 0.3


KILL_AT_EVALUATE = """
import json, os, signal, sys
from fl_app.client_app import app
from fl_app.config import RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid

cfg = RunConfig.from_flower(json.loads(sys.argv[1]))

def client(msg, context):
    record = msg.content.config_records.get("config")
    if msg.metadata.message_type == "evaluate" and record and record["server-round"] == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # every silo has trained round 3 already
    return app(msg, context)

run_federation(InProcessGrid(client, cfg.to_flower(), int(sys.argv[2])), cfg)
"""


@pytest.mark.parametrize("method", ["ditto", "fedper"])
def test_personal_state_survives_a_sigkill_and_resume_bit_identically(tmp_path, method):
    """The server dies after every silo trained (and saved its personal state for) round
    3, before round 3 was checkpointed. The resumed run replays round 3 from round 2's
    checkpoint in a new Flower run (empty context.state): each silo starts from its saved
    state of round 2, not the one it already made for round 3. Global model (FedPer: it
    averages the personal heads) and personal metrics equal the uninterrupted run's."""
    settings = {"num-server-rounds": 4, "personalization.method": method}
    reference = _run(tmp_path / "reference", **settings)

    killed = RunConfig.from_flower({**BASE, **settings, "output.run-dir": str(tmp_path / "killed")})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    child = subprocess.run(
        [sys.executable, "-c", KILL_AT_EVALUATE, json.dumps(killed.to_flower()), str(SILOS)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert child.returncode == -9, child.stderr[-3000:]
    (run_dir,) = (tmp_path / "killed").iterdir()
    saved = list(Path(os.environ["FEDSILO_SILO_STATE_DIR"]).glob("*-personal.pt"))
    assert len(saved) >= 2 * SILOS  # the reference's lineage and the killed run's

    resumed = _run(tmp_path / "killed", **settings, **{"output.resume": True})
    assert resumed == run_dir
    assert _same_model(resumed, reference)
    ref, got = _evaluate(reference), _evaluate(resumed)
    assert sorted(got) == [1, 2, 3, 4]
    for rnd in (3, 4):
        for key in ("silo-personal-accuracy-min", "silo-personal-accuracy-mean", "personal-loss"):
            assert got[rnd][key] == ref[rnd][key], (rnd, key)

    def personal_losses(run_dir: Path) -> dict:
        rows = _rows(run_dir, "silo_metrics.json")
        return {(r["round"], r["partition-id"]): r["personal-loss"]
                for r in rows if r["phase"] == "evaluate" and r["round"] >= 3}  # fmt: skip

    assert personal_losses(resumed) == personal_losses(reference)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"personalization.method": "fedbn"}, "needs a model with BatchNorm.*digits-bn"),
        ({"personalization.method": "ditto", "dp.local": True},
         "'ditto' is unsound with 'dp.local'.*outside the DP guarantee"),
        ({"personalization.method": "finetune", "dp.local": True}, "unsound with 'dp.local'"),
        ({"personalization.method": "fedrep", "dp.local": True}, "outside DP-SGD"),
        ({"personalization.method": "fedper", "personalization.head": "classifier"},
         "'personalization.head' = 'classifier' names none"),
        ({"personalization.method": "fedper", "mode": "vertical", "task": "breast-cancer"},
         "in mode 'vertical'"),
        ({"personalization.method": "fedbn", "task": "digits-bn", "dp.local": True},
         "'dp.local' = true is not available for task 'digits-bn'"),
    ],
)  # fmt: skip
def test_unsound_combinations_are_refused_with_the_reason(settings, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RunConfig.from_flower(settings)


def test_sound_combinations_are_accepted():
    RunConfig.from_flower({"personalization.method": "fedper", "dp.local": True})
    RunConfig.from_flower({"personalization.method": "ditto", "dp.central": True,
                           "robust.max-update-norm-ratio": 0.0})  # fmt: skip
    RunConfig.from_flower({"personalization.method": "fedrep", "compression.method": "topk"})
    RunConfig.from_flower({"personalization.method": "fedper", "secagg.enabled": True,
                           "robust.max-update-norm-ratio": 0.0})  # fmt: skip
    RunConfig.from_flower({"personalization.method": "ditto", "strategy": "krum"})


@pytest.mark.parametrize(
    ("settings"),
    [
        {"personalization.method": "fedper", "strategy": "robust-trimmed-mean"},
        {"personalization.method": "ditto", "secagg.enabled": True,
         "robust.max-update-norm-ratio": 0.0},
        {"personalization.method": "fedbn", "task": "digits-bn", "dp.central": True,
         "dp.noise-multiplier": 0.01, "dp.reproducible-noise": True,
         "robust.max-update-norm-ratio": 0.0},
        {"personalization.method": "fedrep", "compression.method": "topk",
         "compression.topk-fraction": 0.1, "compression.topk-warmup-rounds": 1},
        {"personalization.method": "fedper", "dp.local": True,
         "dp.local-noise-multiplier": 0.5},
    ],
    ids=["fedper-trimmed-mean", "ditto-secagg", "fedbn-central-dp", "fedrep-topk",
         "fedper-local-dp"],
)  # fmt: skip
def test_methods_run_with_robust_rules_secagg_dp_and_compression(tmp_path, settings):
    """What is shared goes through the rule, secure aggregation, DP or compression as in
    any run; every round aggregates every silo and both summaries are reported."""
    run_dir = _run(tmp_path, **settings)
    trains = [r for r in _rows(run_dir) if r["phase"] == "train"]
    assert [r["replies"] for r in trains] == [SILOS, SILOS]
    assert all(r["failures"] == 0 for r in trains)
    for row in _evaluate(run_dir).values():
        assert row["silo-personal-accuracy-silos"] == row["silo-accuracy-silos"] == SILOS
