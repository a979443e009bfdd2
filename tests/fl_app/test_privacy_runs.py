"""Differential privacy through the whole app (in-process grid: the same ServerApp and
ClientApp code as `flwr run`): ε reported every round, budgets respected, bad configs
refused before round 1."""

import json
import math

import dp_accounting
import pytest
import torch
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fl_app.audit import read_audit_log
from fl_app.checkpointing import saved_layers
from fl_app.client_app import app as client_app
from fl_app.config import ConfigError, RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _run(tmp_path, num_nodes=5, **overrides):
    cfg = RunConfig.from_flower(
        {
            **RunConfig().to_flower(),
            "task": "breast-cancer",
            "output.run-dir": str(tmp_path),
            **overrides,
        }
    )
    result, _ = run_federation(InProcessGrid(client_app, cfg.to_flower(), num_nodes), cfg)
    return cfg, result


def independent_epsilons(sigma: float, q: float, rounds: int, delta: float, mechanism: str):
    """ε after each of ``rounds`` rounds from Google's dp-accounting: RDP for our RDP
    accountant, PLD (the numerical counterpart of PRV) for our PRV accountant."""
    gaussian = dp_accounting.GaussianDpEvent(sigma)
    event = gaussian if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian)
    out = []
    for t in range(1, rounds + 1):
        accountant = RdpAccountant() if mechanism == "rdp" else PLDAccountant()
        accountant.compose(event, t)
        out.append(float(accountant.get_epsilon(delta)))
    return out


@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
@pytest.mark.parametrize(
    ("sampling", "silos", "q"),
    [("full participation", 5, 1.0), ("secret Poisson sampling", 6, 0.5)],
)
def test_epsilon_reported_every_round_matches_an_independent_accountant(
    tmp_path, mechanism, sampling, silos, q
):
    overrides = {
        "dp.central": True,
        "dp.noise-multiplier": 1.2,
        "dp.clip-norm": 2.0,
        "robust.max-update-norm-ratio": 0.0,
        "num-server-rounds": 3,
        "training.local-epochs": 1,
        "dp.accountant": mechanism,
        "sampling.fraction-evaluate": 0.0,
        "sampling.min-evaluate-nodes": 0,
    }
    if q < 1:
        overrides |= {
            "dp.sampling-amplification": True,
            "sampling.fraction-train": q,
            "sampling.min-train-nodes": 1,
        }
    cfg, result = _run(tmp_path, num_nodes=silos, **overrides)
    reported = [result.train_metrics_clientapp[r]["epsilon"] for r in (1, 2, 3)]
    expected = independent_epsilons(1.2, q, 3, cfg.dp.target_delta, mechanism)
    assert reported == pytest.approx(expected, rel=0.01), sampling
    assert result.train_metrics_clientapp[3]["clip-norm"] == 2.0
    if q < 1:  # against whoever learns the cohorts: the same rounds at rate 1
        unamplified = [result.train_metrics_clientapp[r]["epsilon-unamplified"] for r in (1, 2, 3)]
        full = independent_epsilons(1.2, 1.0, 3, cfg.dp.target_delta, mechanism)
        assert unamplified == pytest.approx(full, rel=0.01)
        assert all(u > e for u, e in zip(unamplified, reported, strict=True))
    else:
        assert "epsilon-unamplified" not in result.train_metrics_clientapp[3]


def test_a_resumed_run_continues_the_secret_noise_and_sampling_exactly(tmp_path, snapshot_sink):
    """Secret noise and secret Poisson sampling (no reproducible key): the generators'
    states live in the server checkpoint, so resuming after round 2 from a copy of that
    run's directory ends with the uninterrupted run's model, bit for bit."""
    settings = {
        "task": "breast-cancer",
        "strategy": "fedadam",
        "dp.central": True,
        "dp.adaptive-clipping": True,
        "dp.noise-multiplier": 0.2,
        "robust.max-update-norm-ratio": 0.0,
        "dp.sampling-amplification": True,
        "sampling.fraction-train": 0.5,
        "sampling.min-train-nodes": 1,
        "num-server-rounds": 3,
        "training.local-epochs": 1,
        "sampling.fraction-evaluate": 0.0,
        "sampling.min-evaluate-nodes": 0,
    }
    snapshot = tmp_path / "snapshot"

    cfg = RunConfig.from_flower({**settings, "output.run-dir": str(tmp_path / "runs")})
    sink = snapshot_sink(tmp_path / "runs", snapshot)
    _, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), 6), cfg, (sink,))
    assert not (snapshot / "model.pt").exists()

    resumed = RunConfig.from_flower(
        {**settings, "output.run-dir": str(tmp_path / "elsewhere"), "output.resume": True,
         "output.resume-from": str(snapshot)}
    )  # fmt: skip
    result, same_dir = run_federation(InProcessGrid(client_app, resumed.to_flower(), 6), resumed)
    assert same_dir == snapshot and sorted(result.train_metrics_clientapp) == [3]
    original = torch.load(run_dir / "model.pt", weights_only=True)
    continued = torch.load(snapshot / "model.pt", weights_only=True)
    assert all(torch.equal(original[k], continued[k]) for k in original)
    # The same secret cohort was drawn for round 3.
    cohorts = [
        [e["sampled"] for e in read_audit_log(d / "audit.jsonl") if e["event"] == "train"][-1]
        for d in (run_dir, snapshot)
    ]
    assert cohorts[0] == cohorts[1]
    rows = json.loads((snapshot / "metrics.json").read_text())
    assert [r["dp-private"] for r in rows if r["phase"] == "privacy"] == [1.0]  # not repeated
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["strategy"]
    (dp,) = [own for name, own in saved_layers(state) if name == "DPFedAvg"]
    assert {"generator", "sampling_generator"} <= dp.keys()


def test_a_budget_in_stop_mode_is_never_exceeded(tmp_path):
    target = 4.0
    _, result = _run(
        tmp_path,
        **{
            "dp.central": True,
            "dp.noise-multiplier": 2.0,
            "dp.target-epsilon": target,
            "robust.max-update-norm-ratio": 0.0,
            "num-server-rounds": 6,
        },
    )
    spent = [m["epsilon"] for m in result.train_metrics_clientapp.values() if "epsilon" in m]
    assert spent and max(spent) <= target
    assert len(spent) < 6  # it stopped before the round that would exceed the budget
    assert len(result.evaluate_metrics_serverapp) == 7  # the run still ended cleanly


def test_calibrated_noise_spends_the_budget_over_the_planned_rounds(tmp_path):
    _, result = _run(
        tmp_path,
        **{
            "dp.central": True,
            "dp.target-epsilon": 4.0,
            "dp.budget-mode": "calibrate",
            "robust.max-update-norm-ratio": 0.0,
            "num-server-rounds": 3,
        },
    )
    eps = result.train_metrics_clientapp[3]["epsilon"]
    assert 3.9 <= eps <= 4.0


def test_local_dp_epsilon_is_cumulative_per_silo(tmp_path):
    _, result = _run(
        tmp_path,
        num_nodes=3,
        **{
            "dp.local": True,
            "dp.local-noise-multiplier": 1.0,
            "num-server-rounds": 2,
            "strategy": "fedavg",
        },
    )
    e1 = result.train_metrics_clientapp[1]["dp-epsilon"]
    e2 = result.train_metrics_clientapp[2]["dp-epsilon"]
    assert 0 < e1 < e2 and math.isfinite(e2)
    assert result.evaluate_metrics_serverapp[2]["roc-auc"] > 0.8


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"dp.central": True, "strategy": "krum", "robust.max-update-norm-ratio": 0.0}, "unsound"),
        ({"dp.central": True}, "'robust.max-update-norm-ratio' = 0.0"),
        ({"dp.local": True, "strategy": "fedprox"}, "training.proximal-mu"),
        ({"dp.noise-multiplier": -1.0}, "'dp.noise-multiplier'"),
        ({"dp.target-delta": 1.0}, "'dp.target-delta'"),
        ({"dp.clip-norm": 0.0}, "'dp.clip-norm'"),
        ({"dp.target-epsilon": -2.0}, "'dp.target-epsilon'"),
        ({"dp.reproducible-noise": True}, "'dp.reproducible-noise' = true .* no DP mechanism"),
        ({"dp.sampling-amplification": True}, "needs 'dp.central' = true"),
        (
            {
                "dp.sampling-amplification": True,
                "dp.central": True,
                "robust.max-update-norm-ratio": 0.0,
            },
            "needs 'sampling.min-train-nodes' = 1",
        ),
    ],
)
def test_unsound_or_invalid_dp_configs_are_refused(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RunConfig.from_flower(overrides)
