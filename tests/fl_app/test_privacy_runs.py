"""Differential privacy through the whole app (in-process grid: the same ServerApp and
ClientApp code as `flwr run`): ε reported every round, budgets respected, bad configs
refused before round 1."""

import math

import dp_accounting
import pytest
import torch
from dp_accounting.rdp import RdpAccountant

from fl_app.client_app import app as client_app
from fl_app.config import ConfigError, RunConfig
from fl_app.federation import run_federation
from fl_app.inprocess import InProcessGrid


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _run(tmp_path, num_nodes=5, **overrides):
    cfg = RunConfig.from_flower(
        {**RunConfig().to_flower(), "task": "breast-cancer", "run-dir": str(tmp_path), **overrides}
    )
    result, _ = run_federation(InProcessGrid(client_app, cfg.to_flower(), num_nodes), cfg)
    return cfg, result


def test_central_dp_reports_epsilon_each_round_matching_an_independent_accountant(tmp_path):
    cfg, result = _run(
        tmp_path,
        **{
            "central-dp": True,
            "noise-multiplier": 1.2,
            "clip-norm": 2.0,
            "max-update-norm-ratio": 0.0,
            "num-server-rounds": 3,
        },
    )
    eps = [result.train_metrics_clientapp[r]["epsilon"] for r in (1, 2, 3)]
    assert eps == sorted(eps) and eps[0] > 0
    # Second implementation: Google's dp-accounting RDP over 3 full-participation rounds.
    independent = RdpAccountant()
    independent.compose(dp_accounting.GaussianDpEvent(1.2), 3)
    assert eps[-1] == pytest.approx(independent.get_epsilon(cfg.target_delta), rel=0.01)
    assert result.train_metrics_clientapp[3]["clip-norm"] == 2.0


def test_a_budget_in_stop_mode_is_never_exceeded(tmp_path):
    target = 4.0
    _, result = _run(
        tmp_path,
        **{
            "central-dp": True,
            "noise-multiplier": 2.0,
            "target-epsilon": target,
            "max-update-norm-ratio": 0.0,
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
            "central-dp": True,
            "target-epsilon": 4.0,
            "budget-mode": "calibrate",
            "max-update-norm-ratio": 0.0,
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
            "local-dp": True,
            "local-noise-multiplier": 1.0,
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
        ({"central-dp": True, "strategy": "krum", "max-update-norm-ratio": 0.0}, "unsound"),
        ({"central-dp": True}, "'max-update-norm-ratio' = 0.0"),
        ({"local-dp": True, "strategy": "fedprox"}, "proximal-mu"),
        ({"noise-multiplier": -1.0}, "'noise-multiplier'"),
        ({"target-delta": 1.0}, "'target-delta'"),
        ({"clip-norm": 0.0}, "'clip-norm'"),
        ({"target-epsilon": -2.0}, "'target-epsilon'"),
    ],
)
def test_unsound_or_invalid_dp_configs_are_refused(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RunConfig.from_flower(overrides)
