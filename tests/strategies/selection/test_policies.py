"""Selection policies as pure units: seeded, fair, resumable, and doing what their papers
say on histories built by hand."""

from __future__ import annotations

import math

import pytest

from fl_core.errors import ConfigError
from strategies.selection import POLICIES, Outcome, SelectionSection, make_policy
from strategies.selection.base import weighted_sample

N, M, ROUNDS = 12, 3, 8


def _outcome(p: int) -> Outcome:
    return Outcome(p, True, 1.0 + p, 1.0 / (1 + p), 10 * (p + 1))


def _drive(policy, outcomes=lambda r, p: _outcome(p)):
    picks = []
    for r in range(1, ROUNDS + 1):
        selection = policy.select(r, range(N), M)
        picks.append(selection.partitions)
        policy.observe(r, [outcomes(r, p) for p in selection.partitions])
    return picks


@pytest.mark.parametrize("name", POLICIES.names())
def test_a_policy_is_seeded_and_resumes_exactly(name):
    section = SelectionSection(policy=name, fairness_rounds=4)
    straight = make_policy(section, 5)
    picks = _drive(straight)
    assert picks == _drive(make_policy(section, 5))
    assert all(len(p) == M and len(set(p)) == M for p in picks)
    # Resume after round 4 from the state dict: the same later choices.
    first = make_policy(section, 5)
    for r in range(1, 5):
        s = first.select(r, range(N), M)
        first.observe(
            r, [Outcome(p, True, 1.0 + p, 1.0 / (1 + p), 10 * (p + 1)) for p in s.partitions]
        )
    resumed = make_policy(section, 5)
    resumed.load_state_dict(first.state_dict())
    later = []
    for r in range(5, ROUNDS + 1):
        s = resumed.select(r, range(N), M)
        later.append(s.partitions)
        resumed.observe(
            r, [Outcome(p, True, 1.0 + p, 1.0 / (1 + p), 10 * (p + 1)) for p in s.partitions]
        )
    assert later == picks[4:]
    # Another seed draws differently (the policy is not a fixed schedule).
    if name != "power-of-choice":
        assert _drive(make_policy(section, 6)) != picks


@pytest.mark.parametrize("name", POLICIES.names())
@pytest.mark.parametrize("guard", [2, 3, 5])
def test_the_fairness_guard_leaves_no_silo_out_more_than_k_rounds(name, guard):
    # The guard can hold for every silo when N <= (K + 1) * m (12 silos, 3 slots: K >= 3).
    policy = make_policy(SelectionSection(policy=name, fairness_rounds=guard), 1)
    last = dict.fromkeys(range(N), 0)
    for r in range(1, 20):
        selection = policy.select(r, range(N), M)
        for p in selection.partitions:
            last[p] = r
        owed = [p for p in range(N) if r - last[p] > guard]
        if (guard + 1) * M >= N:
            assert not owed, (r, owed)
        policy.observe(r, [Outcome(p, True, 1.0, 0.5, 10) for p in selection.partitions])
        assert all(selection.reasons.values())  # every choice says why


def test_availability_backs_off_a_failing_silo_exponentially():
    policy = make_policy(SelectionSection(policy="availability", backoff_max=4), 0)
    silo = policy.silo(7)
    waits = []
    for r in (1, 3, 6, 11):  # fail each time it is due
        policy.observe(r, [Outcome(7, False)])
        waits.append(silo.backoff_until - r - 1)
    assert waits == [1, 2, 4, 4]  # 2^(k-1) rounds, capped at backoff-max
    assert silo.reliability < 0.1
    # In back-off it is not chosen while enough other silos are ready...
    picks = policy.select(12, range(N), M).partitions
    assert 7 not in picks
    # ...and an answer ends the back-off.
    policy.observe(12, [Outcome(7, True, 1.0, 0.3, 10)])
    assert silo.backoff_until == 0 and silo.failures == 0


def test_power_of_choice_takes_the_highest_losses_among_all_candidates():
    policy = make_policy(SelectionSection(policy="power-of-choice", candidates=N), 0)
    policy.observe(0, [Outcome(p, True, 1.0, float(p), 10) for p in range(N)])
    selection = policy.select(1, range(N), M)
    assert selection.partitions == (9, 10, 11)
    assert "rank 1 of d=12" in selection.reasons[11]


def test_oort_explores_untried_silos_then_exploits_utility_and_penalises_slow_ones():
    section = SelectionSection(policy="oort", exploration=0.0, preferred_seconds=2.0)
    policy = make_policy(section, 0)
    # Silos 0-5 tried: same size, loss grows with p, but 5 is 10x slower than T.
    policy.observe(0, [Outcome(p, True, 20.0 if p == 5 else 1.0, 1.0 + p, 100) for p in range(6)])
    selection = policy.select(1, range(6), 2)
    assert set(selection.partitions) == {3, 4}  # 5 has the highest loss but is too slow
    assert all(v.startswith("exploit") for v in selection.reasons.values())
    assert policy.utility(5, 1, 2.0) == pytest.approx(100 * 6 * (2.0 / 20.0) ** 2)
    explorer = make_policy(SelectionSection(policy="oort", exploration=1.0), 0)
    explorer.observe(0, [Outcome(p, True, 1.0, 1.0, 10) for p in range(6)])
    picks = explorer.select(1, range(N), M)
    assert set(picks.partitions) <= set(range(6, N))  # ε = 1: only silos never tried
    assert all("explore" in why for why in picks.reasons.values())


@pytest.mark.parametrize("name", ["oort", "power-of-choice"])
def test_quality_aware_policies_pass_over_the_high_loss_silo_that_contributes_nothing(name):
    """Silo 11 has the highest loss (as a silo with noisy labels does) but a negative
    contribution score: without scores it is picked first, with them it is not picked."""
    section = SelectionSection(policy=name, candidates=N, exploration=0.0, quality_aware=True)
    contribution = {p: (-0.5 if p == 11 else 1.0) for p in range(N)}
    picks = {}
    for aware in (False, True):
        policy = make_policy(section, 0)
        if aware:
            policy.use_contribution(contribution.get, floor=0.1)
        policy.observe(0, [Outcome(p, True, 1.0, 1.0 + 0.1 * p, 100) for p in range(N)])
        picks[aware] = policy.select(1, range(N), M)
    assert 11 in picks[False].partitions
    assert 11 not in picks[True].partitions
    assert all("quality ×1" in why for why in picks[True].reasons.values())
    # The factors are the contribution module's: 11 is floored, the others are equal.
    assert policy.quality(range(N)) == pytest.approx({**dict.fromkeys(range(11), 12 / 11), 11: 0.1})


def test_weighted_sampling_follows_the_weights():
    import numpy as np

    rng = np.random.default_rng(0)
    counts = [0, 0, 0]
    for _ in range(3000):
        counts[weighted_sample([0, 1, 2], [1.0, 2.0, 0.0], 1, rng)[0]] += 1
    assert counts[2] == 0 and 1.7 < counts[1] / counts[0] < 2.3


def test_an_unknown_policy_and_a_foreign_checkpoint_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"selection.policy.*Did you mean 'oort'"):
        make_policy(SelectionSection(policy="ort"), 0)
    oort = make_policy(SelectionSection(policy="oort"), 0)
    with pytest.raises(ValueError, match=r"'oort'.*'random'"):
        make_policy(SelectionSection(policy="random"), 0).load_state_dict(oort.state_dict())


def test_uniform_random_is_flowers_seeded_draw():
    import random

    policy = make_policy(SelectionSection(policy="random"), 42)
    chosen = policy.select(3, range(10), 4).partitions
    assert list(chosen) == sorted(random.Random("42/train/3").sample(list(range(10)), 4))
    assert all(math.isfinite(v) for v in policy.select(4, range(10), 4).scores.values())
