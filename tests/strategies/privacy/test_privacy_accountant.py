"""FederatedAccountant, calibration and PrivacyBudget against real Opacus and an
independent implementation (Google's dp-accounting)."""

from __future__ import annotations

import itertools
import json
import math

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from strategies.privacy.accountant import (
    FederatedAccountant,
    PrivacyBudget,
    calibrate_noise_multiplier,
    check_delta,
)

DELTA = 1e-5


def _event(sigma: float, q: float) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(sigma)
    return gaussian if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian)


def independent_epsilon(history, delta: float, method: str) -> float:
    """ε of ``history`` [(σ, q, steps)] from dp-accounting (RDP or PLD)."""
    acc = RdpAccountant() if method == "rdp" else PLDAccountant()
    for sigma, q, steps in history:
        acc.compose(_event(sigma, q), steps)
    return float(acc.get_epsilon(delta))


HISTORIES = [
    [(1.0, 0.1, 50)],
    [(1.1, 0.01, 1000)],
    [(0.8, 1.0, 10)],  # no sampling: every client every round
    [(1.5, 0.5, 20), (2.0, 0.3, 30)],  # heterogeneous rounds
]


@pytest.mark.parametrize("history", HISTORIES)
def test_rdp_epsilon_matches_dp_accounting_rdp_within_1_percent(history):
    acc = FederatedAccountant("rdp")
    for sigma, q, steps in history:
        acc.step(steps, noise_multiplier=sigma, sample_rate=q)
    ours = acc.epsilon(DELTA)
    theirs = independent_epsilon(history, DELTA, "rdp")
    assert ours == pytest.approx(theirs, rel=0.01)


@pytest.mark.parametrize("history", HISTORIES[:3])
def test_prv_epsilon_matches_dp_accounting_pld_within_1_percent(history):
    acc = FederatedAccountant("prv")
    for sigma, q, steps in history:
        acc.step(steps, noise_multiplier=sigma, sample_rate=q)
    ours = acc.epsilon(DELTA)
    theirs = independent_epsilon(history, DELTA, "pld")
    assert ours == pytest.approx(theirs, rel=0.01)
    # PRV is tight, RDP an upper bound: PRV ≤ RDP.
    rdp = FederatedAccountant("rdp")
    rdp.load_state_dict(acc.state_dict())
    assert ours <= rdp.epsilon(DELTA)


def test_step_merges_equal_events_and_counts_steps():
    acc = FederatedAccountant("rdp", noise_multiplier=1.0, sample_rate=0.2)
    acc.step()
    acc.step(4)
    acc.step(noise_multiplier=2.0)
    acc.step(2, noise_multiplier=2.0)
    assert acc.history == [(1.0, 0.2, 5), (2.0, 0.2, 3)]
    assert acc.num_steps == len(acc) == 8


def test_epsilon_is_zero_before_any_step_and_infinite_without_noise():
    acc = FederatedAccountant("prv", noise_multiplier=1.0, sample_rate=0.5)
    assert acc.epsilon(DELTA) == 0.0
    acc.step(noise_multiplier=0.0)
    assert math.isinf(acc.epsilon(DELTA))


def test_epsilon_grows_with_steps():
    acc = FederatedAccountant("rdp", noise_multiplier=1.2, sample_rate=0.3)
    values = []
    for _ in range(5):
        acc.step()
        values.append(acc.epsilon(DELTA))
    assert all(b > a for a, b in itertools.pairwise(values))


def test_state_dict_survives_config_record_metric_record_and_json():
    acc = FederatedAccountant("rdp", noise_multiplier=1.3, sample_rate=0.25)
    acc.step(7)
    acc.step(3, sample_rate=0.5)
    state = acc.state_dict()
    # context.state of a ClientApp is a RecordDict: store as a ConfigRecord and read back.
    context_state = RecordDict({"dp-accountant": ConfigRecord(state)})
    for restored_state in (
        dict(context_state["dp-accountant"]),
        dict(MetricRecord(state)),
        json.loads(json.dumps(state)),
    ):
        restored = FederatedAccountant("rdp")
        restored.load_state_dict(restored_state)
        assert restored.history == acc.history
        assert restored.epsilon(DELTA) == acc.epsilon(DELTA)
    # The events are mechanism independent: a PRV accountant accounts the same history.
    prv = FederatedAccountant("prv")
    prv.load_state_dict(state)
    assert prv.history == acc.history


def test_empty_state_round_trips():
    acc = FederatedAccountant()
    restored = FederatedAccountant()
    restored.load_state_dict(dict(ConfigRecord(acc.state_dict())))
    assert restored.history == []


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"noise-multiplier": [1.0], "sample-rate": [0.1]}, "lacks steps"),
        ({"noise-multiplier": [1.0], "sample-rate": [0.1, 0.2], "steps": [1]}, "length"),
        ({"noise-multiplier": [-1.0], "sample-rate": [0.1], "steps": [1]}, "noise-multiplier"),
        ({"noise-multiplier": [1.0], "sample-rate": [1.5], "steps": [1]}, "sample-rate"),
        ({"noise-multiplier": [1.0], "sample-rate": [0.1], "steps": [0]}, "steps"),
    ],
)
def test_load_state_dict_rejects_malformed_state(state, message):
    with pytest.raises(ValueError, match=message):
        FederatedAccountant().load_state_dict(state)


def test_copy_is_independent():
    acc = FederatedAccountant("rdp", 1.0, 0.1)
    acc.step(3)
    twin = acc.copy()
    twin.step(10)
    assert acc.num_steps == 3 and twin.num_steps == 13


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mechanism": "gdp"}, "gdp.*underestimate"),
        ({"mechanism": "moments"}, "mechanism must be one of rdp, prv"),
        ({"noise_multiplier": -0.5}, "noise_multiplier must be ≥ 0"),
        ({"noise_multiplier": math.nan}, "noise_multiplier must be a finite"),
        ({"sample_rate": 0.0}, r"sample_rate must be in \(0, 1\]"),
        ({"sample_rate": 1.01}, r"sample_rate must be in \(0, 1\]"),
    ],
)
def test_accountant_validation_names_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FederatedAccountant(**kwargs)


def test_step_and_epsilon_validate_their_arguments():
    acc = FederatedAccountant()
    with pytest.raises(ValueError, match="num_steps"):
        acc.step(0)
    with pytest.raises(ValueError, match="sample_rate"):
        acc.step(sample_rate=-0.1)
    with pytest.raises(ValueError, match="delta"):
        acc.epsilon(0.0)
    with pytest.raises(ValueError, match="delta"):
        acc.epsilon(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_epsilon": 0.0, "target_delta": 1e-5}, "target_epsilon must be.*> 0"),
        ({"target_epsilon": -1.0, "target_delta": 1e-5}, "target_epsilon"),
        ({"target_epsilon": 1.0, "target_delta": 0.0}, "target_delta must be.*0 < δ < 1"),
        ({"target_epsilon": 1.0, "target_delta": -1e-5}, "target_delta"),
        (
            {"target_epsilon": 1.0, "target_delta": 0.01, "n_records": 100},
            r"target_delta = 0.01 is not below 1/n_records = 1/100.*Set target_delta < 0.01",
        ),
    ],
)
def test_budget_validation_names_the_parameter_and_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrivacyBudget(**kwargs)


def test_check_delta_accepts_delta_below_one_over_n():
    assert check_delta(1e-3, n_records=999) == 1e-3


# ------------------------------------------------------------------------------ calibration
@pytest.mark.parametrize(
    ("mechanism", "epsilon", "q", "rounds"),
    [("rdp", 2.0, 0.1, 100), ("rdp", 8.0, 1.0, 20), ("prv", 3.0, 0.2, 50)],
)
def test_calibration_hits_the_target_within_tolerance(mechanism, epsilon, q, rounds):
    sigma = calibrate_noise_multiplier(epsilon, DELTA, q, rounds, mechanism)
    acc = FederatedAccountant(mechanism, sigma, q)
    acc.step(rounds)
    reached = acc.epsilon(DELTA)
    assert epsilon - 0.02 <= reached <= epsilon
    # One more round would overshoot: the plan is tight.
    assert not PrivacyBudget(epsilon, DELTA).can_afford_next_round(acc, 5)


def test_calibration_with_steps_per_round_counts_all_steps():
    sigma = calibrate_noise_multiplier(4.0, DELTA, 0.05, 3, steps_per_round=20)
    acc = FederatedAccountant("rdp", sigma, 0.05)
    acc.step(60)
    assert 3.98 <= acc.epsilon(DELTA) <= 4.0


def test_calibration_errors_are_clear():
    with pytest.raises(ValueError, match="target_epsilon"):
        calibrate_noise_multiplier(0.0, DELTA, 0.1, 10)
    with pytest.raises(ValueError, match="rounds"):
        calibrate_noise_multiplier(1.0, DELTA, 0.1, 0)
    with pytest.raises(ValueError, match="1/n_records"):
        calibrate_noise_multiplier(1.0, 0.1, 0.1, 10, n_records=20)
    with pytest.raises(ValueError, match="cannot reach target_epsilon"):
        calibrate_noise_multiplier(1e-9, 1e-12, 1.0, 10_000)


# ------------------------------------------------------------------------------ budget
@pytest.mark.parametrize(("mechanism", "target", "min_rounds"), [("rdp", 2.0, 15), ("prv", 1.2, 5)])
def test_stop_mode_never_reports_epsilon_above_target(mechanism, target, min_rounds):
    budget = PrivacyBudget(target_epsilon=target, target_delta=DELTA, n_records=100)
    sigma = budget.plan(
        "stop", sample_rate=0.1, rounds=500, noise_multiplier=1.5, mechanism=mechanism
    )
    acc = FederatedAccountant(mechanism, sigma, 0.1)
    rounds_run, reported = 0, []
    for _ in range(500):
        if not budget.can_afford_next_round(acc):
            break
        acc.step()
        rounds_run += 1
        reported.append(budget.spent(acc))
    else:
        pytest.fail("the budget never stopped the run")
    assert max(reported) <= budget.target_epsilon
    assert rounds_run >= min_rounds  # the budget allowed real training before stopping
    # can_afford_next_round did not change the accountant; the refused round would exceed.
    assert acc.num_steps == rounds_run
    assert budget.epsilon_after(acc) > budget.target_epsilon


def test_calibrate_mode_plans_the_whole_run_and_checks_still_apply():
    budget = PrivacyBudget(target_epsilon=1.5, target_delta=DELTA)
    sigma = budget.plan("calibrate", sample_rate=0.2, rounds=40)
    acc = FederatedAccountant("rdp", sigma, 0.2)
    for _ in range(40):
        assert budget.can_afford_next_round(acc)
        acc.step()
    assert budget.spent(acc) <= 1.5
    assert not budget.can_afford_next_round(acc, 4)


def test_plan_mode_arguments_are_checked():
    budget = PrivacyBudget(1.0, DELTA)
    with pytest.raises(ValueError, match="'calibrate' chooses the noise multiplier"):
        budget.plan("calibrate", sample_rate=0.1, rounds=5, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="'stop' needs a noise_multiplier"):
        budget.plan("stop", sample_rate=0.1, rounds=5)
    with pytest.raises(ValueError, match="infinite ε"):
        budget.plan("stop", sample_rate=0.1, rounds=5, noise_multiplier=0.0)
    with pytest.raises(ValueError, match="budget mode must be one of calibrate, stop"):
        budget.plan("spend", sample_rate=0.1, rounds=5)
