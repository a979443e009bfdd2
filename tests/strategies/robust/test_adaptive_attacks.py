"""Adaptive Byzantine attacks (min-max, min-sum, ROP, Mimic) against independent numpy
reference computations on fixed small inputs, their stated bounds, and their selection in
the run config and the server-side simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fl_app.config import RunConfig
from fl_app.messages import train_reply as build_reply
from strategies import build_strategy
from strategies.robust import centered_clipping, coordinate_median
from strategies.robust.attacks import (
    ADAPTIVE_ATTACKS,
    ATTACKS,
    MimicTracker,
    mimic,
    mimic_direction_init,
    mimic_direction_update,
    mimic_target,
    min_max,
    min_sum,
    perturbation_direction,
    relocated_orthogonal_perturbation,
    top_principal_direction,
)
from strategies.robust.simulation import SimulatedAttack, byzantine_updates, model_attacks
from strategies.wrappers import ValidatedUpdates

#: Fixed small honest updates (5 silos × 4 coordinates), no RNG involved.
HONEST = np.array(
    [
        [0.10, -0.20, 0.30, 0.05],
        [0.12, -0.18, 0.25, 0.00],
        [0.08, -0.25, 0.35, 0.10],
        [0.15, -0.10, 0.20, -0.05],
        [0.05, -0.22, 0.40, 0.02],
    ]
)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


# ---------------------------------------------------------------- numpy references


def _np_direction(x: np.ndarray, kind: str) -> np.ndarray:
    mean = x.mean(axis=0)
    if kind == "std":
        return x.std(axis=0, ddof=1)
    if kind == "unit-vec":
        return mean / np.linalg.norm(mean)
    return np.sign(mean)


def _np_min_max_sum(x: np.ndarray, kind: str, objective: str) -> np.ndarray:
    """The authors' loop, written out literally (lamda, lamda_fail, lamda_succ)."""
    mean, dev = x.mean(axis=0), _np_direction(x, kind)
    sq = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])
    bound = sq.max() if objective == "max" else sq.sum(axis=1).min()
    lamda, lamda_fail, lamda_succ = 10.0, 10.0, 0.0
    while abs(lamda_succ - lamda) > 1e-5:
        d = np.array([np.sum((a - (mean - lamda * dev)) ** 2) for a in x])
        if (d.max() if objective == "max" else d.sum()) <= bound:
            lamda_succ = lamda
            lamda = lamda + lamda_fail / 2
        else:
            lamda = lamda - lamda_fail / 2
        lamda_fail = lamda_fail / 2
    return mean - lamda_succ * dev


def _np_rop(x, prev, norm=1.0, lamb=0.9, pi=1.0, angle=90.0):
    mu = x.mean(axis=0)
    v = np.zeros_like(mu) if prev is None else prev
    ud = mu if prev is None else lamb * v + (1 - lamb) * mu
    pert = np.ones_like(mu)
    pert = pert - ud * (pert @ ud) / (ud @ ud)
    pert = pert / np.linalg.norm(pert)
    n_ud = ud / np.linalg.norm(ud)
    rad = math.radians(angle)
    pert = pert * math.sin(rad) + n_ud * math.cos(rad)
    return v * pi + mu * (1 - pi) + pert * (norm / np.linalg.norm(pert))


# ---------------------------------------------------------------- against the references


@pytest.mark.parametrize("kind", ["std", "unit-vec", "sign"])
@pytest.mark.parametrize("attack,objective", [(min_max, "max"), (min_sum, "sum")])
def test_min_max_and_min_sum_equal_the_authors_loop(attack, objective, kind):
    expected = _np_min_max_sum(HONEST, kind, objective)
    out = attack(_t(HONEST), 3, direction=kind)
    assert out.shape == (3, 4)
    for row in out:
        np.testing.assert_allclose(row.numpy(), expected, rtol=0, atol=1e-9)


def test_perturbation_directions_by_hand():
    x = _t([[1.0, -2.0], [3.0, -2.0]])  # mean (2, -2), std (sqrt 2, 0)
    np.testing.assert_allclose(perturbation_direction(x, "std").numpy(), [math.sqrt(2), 0.0])
    s = 1 / math.sqrt(2)
    np.testing.assert_allclose(perturbation_direction(x, "unit-vec").numpy(), [s, -s])
    np.testing.assert_allclose(perturbation_direction(x, "sign").numpy(), [1.0, -1.0])
    with pytest.raises(ValueError, match="direction must be one of"):
        perturbation_direction(x, "zeros")


def test_min_max_gamma_by_hand():
    """Two honest points on a line: x = (0, 0), (2, 0); mean (1, 0), std (√2, 0). The largest
    γ with max(|1 - √2 γ|, |-1 - √2 γ|)² ≤ 4 is γ = 1/√2; the γ search finds it to ~1e-5
    from below."""
    out = min_max(_t([[0.0, 0.0], [2.0, 0.0]]), 1)[0]
    assert out[1] == 0.0
    assert 0.0 <= out[0].item() < 5e-5  # 1 - √2 · (1/√2), γ accepted from below
    # Min-sum: (1 - √2γ)² + (1 + √2γ)² = 2 + 4γ² ≤ min_j Σ_i ||x_i - x_j||² = 4 -> γ = 1/√2.
    assert 0.0 <= min_sum(_t([[0.0, 0.0], [2.0, 0.0]]), 1)[0][0].item() < 5e-5


@pytest.mark.parametrize("prev", [None, np.array([0.3, -0.1, 0.2, 0.4])])
@pytest.mark.parametrize("angle,pi,norm", [(90.0, 1.0, 1.0), (60.0, 0.5, 2.5), (90.0, 0.0, 0.3)])
def test_rop_equals_the_authors_construction(prev, angle, pi, norm):
    expected = _np_rop(HONEST, prev, norm=norm, pi=pi, angle=angle)
    out = relocated_orthogonal_perturbation(
        _t(HONEST), 2, previous_aggregate=None if prev is None else _t(prev),
        norm=norm, relocation=pi, angle=angle,
    )  # fmt: skip
    for row in out:
        np.testing.assert_allclose(row.numpy(), expected, atol=1e-12)


def test_rop_is_orthogonal_to_the_reference_and_at_the_reference_point():
    prev = _t([0.3, -0.1, 0.2, 0.4])
    out = relocated_orthogonal_perturbation(_t(HONEST), 1, previous_aggregate=prev)[0]
    ref = 0.9 * prev + 0.1 * _t(HONEST).mean(dim=0)
    pert = out - prev  # π = 1: located at the previous aggregate
    assert float(pert @ ref) == pytest.approx(0.0, abs=1e-12)
    assert float(pert.norm()) == pytest.approx(1.0)


def _np_top_pc(x):
    c = x - x.mean(axis=0)
    _, v = np.linalg.eigh(c.T @ c)
    return v[:, -1]


def test_mimic_copies_the_silo_furthest_along_the_top_principal_direction():
    z = _np_top_pc(HONEST)
    z_t = top_principal_direction(_t(HONEST)).numpy()
    assert abs(abs(float(z @ z_t)) - 1.0) < 1e-10  # same axis (the sign is the SVD's)
    expected = int(np.argmax(HONEST @ z_t))
    out = mimic(_t(HONEST), 2)
    for row in out:
        np.testing.assert_array_equal(row.numpy(), HONEST[expected])
    # An explicit direction: silo 4 has the largest third coordinate.
    assert mimic_target(_t(HONEST), _t([0.0, 0.0, 1.0, 0.0])) == 4
    np.testing.assert_array_equal(
        mimic(_t(HONEST), 1, direction=_t([1.0, 0.0, 0.0, 0.0]))[0].numpy(), HONEST[3]
    )


def _np_mimic_online(rounds, seed_z):
    """The authors' MimicVariantAttacker (_init_callback / _warmup_callback) in numpy."""
    mu = rounds[0].mean(axis=0)
    cumu = sum(((g - mu) @ seed_z) * (g - mu) for g in rounds[0])
    z = cumu / np.linalg.norm(cumu)
    for t, x in enumerate(rounds[1:], start=1):
        mu = t / (1 + t) * mu + x.mean(axis=0) / (1 + t)
        cumu = sum(((g - mu) @ z) * (g - mu) for g in x)
        z = t / (1 + t) * z + cumu / np.linalg.norm(cumu) / (1 + t)
        z = z / np.linalg.norm(z)
    return mu, z


def test_mimic_online_direction_equals_the_authors_update():
    rng = np.random.default_rng(3)
    rounds = [HONEST + 0.05 * rng.standard_normal(HONEST.shape) for _ in range(4)]
    gen = torch.Generator().manual_seed(11)
    z0 = torch.randn(4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    mu, z = mimic_direction_init(_t(rounds[0]), generator=gen)
    for t, x in enumerate(rounds[1:], start=1):
        mu, z = mimic_direction_update(_t(x), mu, z, t)
    ref_mu, ref_z = _np_mimic_online(rounds, (z0 / z0.norm()).numpy())
    np.testing.assert_allclose(mu.numpy(), ref_mu, atol=1e-12)
    np.testing.assert_allclose(z.numpy(), ref_z, atol=1e-12)


def test_mimic_tracker_fixes_the_target_after_warmup_and_follows_it_by_id():
    tracker = MimicTracker(warmup=1, seed=0)
    ids = [10, 11, 12, 13, 14]
    row = tracker.choose(_t(HONEST), ids)
    target = ids[row]
    assert tracker.target == target
    shuffled = ids[::-1]  # next round: other order, the same silo is copied
    assert shuffled[tracker.choose(_t(HONEST[::-1].copy()), shuffled)] == target
    without = [i for i in ids if i != target]  # the target is absent: fall back, no error
    rows = torch.tensor(HONEST[[ids.index(i) for i in without]])
    assert 0 <= tracker.choose(rows, without) < len(without)


# ---------------------------------------------------------------- stated bounds


@pytest.mark.parametrize("kind", ["std", "unit-vec", "sign"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_max_stays_within_the_honest_diameter_and_min_sum_within_the_sum_bound(kind, seed):
    x = torch.randn(12, 30, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x += 0.5  # a non-zero mean for the unit-vec and sign directions
    sq = torch.cdist(x, x).square()
    m = min_max(x, 1, direction=kind)[0]
    assert float((x - m).square().sum(dim=1).max()) <= float(sq.max()) * (1 + 1e-12)
    s = min_sum(x, 1, direction=kind)[0]
    assert float((x - s).square().sum()) <= float(sq.sum(dim=1).min()) * (1 + 1e-12)
    # Both move: the search accepted a positive γ (the mean itself is always inside).
    assert float((m - x.mean(dim=0)).norm()) > 0 and float((s - x.mean(dim=0)).norm()) > 0
    # And each is at the edge: 1 % more step would break its bound.
    p = perturbation_direction(x, kind)
    gamma_m = float((x.mean(dim=0) - m).norm() / p.norm())
    beyond = x.mean(dim=0) - 1.01 * gamma_m * p
    assert float((x - beyond).square().sum(dim=1).max()) > float(sq.max())


def test_min_max_moves_the_median_away_from_the_honest_mean():
    """Against coordinate-wise median (20 % Byzantine), min-max shifts the aggregate away
    from the honest mean while each Byzantine update stays inside the honest diameter."""
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    f = 4
    clean = coordinate_median(x)
    attacked = coordinate_median(torch.cat([x, min_max(x, f)]))
    shift = float((attacked - x.mean(dim=0)).norm())
    assert shift > 1.5 * float((clean - x.mean(dim=0)).norm())


def test_rop_shifts_centred_clipping_orthogonally_by_its_share():
    """Honest updates near the previous aggregate v; CClip around v with a radius above the
    perturbation: the f ROP vectors pass unclipped and move the output by f/n · norm,
    orthogonally to the reference direction."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(20, generator=gen, dtype=torch.float64)
    honest = v + 0.01 * torch.randn(8, 20, generator=gen, dtype=torch.float64)
    f, norm = 2, 0.5
    byz = relocated_orthogonal_perturbation(honest, f, previous_aggregate=v, norm=norm)
    clean = centered_clipping(honest, center=v, tau=1.0)
    attacked = centered_clipping(torch.cat([honest, byz]), center=v, tau=1.0)
    ref = 0.9 * v + 0.1 * honest.mean(dim=0)
    moved = attacked - clean * 8 / 10 - v * 2 / 10  # the Byzantine share of the average
    assert float(moved.norm()) == pytest.approx(f / 10 * norm, rel=1e-9)
    assert abs(float(moved @ ref)) < 1e-9


# ---------------------------------------------------------------- run config and simulation


def test_adaptive_attacks_are_registered_selectable_and_simulated():
    assert set(ADAPTIVE_ATTACKS) == {"min-max", "min-sum", "rop", "mimic"}
    assert not set(ADAPTIVE_ATTACKS) & set(ATTACKS)  # the classic registry is unchanged
    for name in ADAPTIVE_ATTACKS:
        assert RunConfig(attack={"kind": name, "fraction": 0.2}).attack.kind == name
        assert name in model_attacks()
        out = byzantine_updates(
            name, _t(HONEST), 2, strength=0.0, generator=torch.Generator().manual_seed(0)
        )
        assert out.shape == (2, 4) and bool(torch.isfinite(out).all())


GLOBAL = {"w": np.zeros((2, 2), dtype=np.float32)}


def _record(values) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.asarray(values, dtype=np.float32).reshape(2, 2))})


def _run(attack: str, rounds: list[np.ndarray], byzantine=frozenset({5, 6})):
    """Run SimulatedAttack over several rounds; returns what the inner strategy saw."""
    seen: list[dict[int, np.ndarray]] = []

    class Capture(ValidatedUpdates):
        def configure_train(self, server_round, arrays, config, grid):
            return []

        def aggregate_train(self, server_round, replies):
            seen.append({
                int(r.content["meta"]["partition-id"]): r.content["arrays"]["w"].numpy().ravel()
                for r in replies
            })  # fmt: skip
            return None, None

    sim = SimulatedAttack(Capture(build_strategy(RunConfig())), attack, byzantine)
    global_model = np.zeros(4)
    for server_round, honest in enumerate(rounds, start=1):
        sim.configure_train(server_round, _record(global_model), None, None)
        replies = [
            build_reply(i, 10, {"w": (global_model + row).astype(np.float32).reshape(2, 2)})
            for i, row in enumerate(honest)
        ] + [build_reply(p, 10, {"w": np.zeros((2, 2), np.float32)}) for p in sorted(byzantine)]
        sim.aggregate_train(server_round, replies)
        global_model = global_model + honest.mean(axis=0)  # the "aggregate" of this round
    return seen


def test_simulated_min_max_sends_the_pure_functions_vector():
    seen = _run("min-max", [HONEST])[0]
    expected = _np_min_max_sum(HONEST, "std", "max")
    for p in (5, 6):
        np.testing.assert_allclose(seen[p], expected, atol=1e-6)
    np.testing.assert_allclose(seen[0], HONEST[0], atol=1e-7)  # honest untouched


def test_simulated_mimic_copies_one_fixed_honest_silo_across_rounds():
    rounds = [HONEST, HONEST[[4, 3, 2, 1, 0]] * 1.1]
    first, second = _run("mimic", rounds)
    copied = [i for i in range(5) if np.allclose(first[5], first[i])]
    assert len(copied) == 1 and np.allclose(first[6], first[5])
    # After the 1-round warm-up the same silo id is copied, whatever its update now is.
    assert np.allclose(second[5], second[copied[0]]) and np.allclose(second[6], second[5])


def test_simulated_rop_uses_the_previous_aggregate():
    rounds = [HONEST, HONEST * 0.5]
    first, second = _run("rop", rounds)
    prev_agg = HONEST.mean(axis=0)  # the global model moved by this between the rounds
    np.testing.assert_allclose(first[5], _np_rop(HONEST, None), atol=1e-6)
    expected = prev_agg + _np_rop(HONEST * 0.5, prev_agg)  # reply = global + delta
    np.testing.assert_allclose(second[5], expected, atol=1e-6)
