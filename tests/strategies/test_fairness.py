"""The fairness summary across silos: hand-computed values, Jain's index at its bounds,
the round-metric names and their inverse."""

from __future__ import annotations

import math

import pytest

from strategies.fairness import (
    fairness_summary,
    is_fairness_key,
    jain_index,
    silo_fairness_metrics,
    summaries_in,
)


def test_summary_of_four_silos_by_hand():
    s = fairness_summary([0.6, 0.8, 0.9, 0.7])
    # sorted 0.6 0.7 0.8 0.9; p10 at rank 0.1·3 = 0.3: 0.6 + 0.3·0.1
    assert s["min"] == pytest.approx(0.6)
    assert s["p10"] == pytest.approx(0.63)
    assert s["median"] == pytest.approx(0.75)
    assert s["mean"] == pytest.approx(0.75)
    # population std: deviations ±0.05, ±0.15 → sqrt((2·0.0025 + 2·0.0225) / 4)
    assert s["std"] == pytest.approx(math.sqrt(0.0125))
    # J = 3.0² / (4 · (0.36 + 0.64 + 0.81 + 0.49)) = 9 / 9.2
    assert s["jain"] == pytest.approx(9 / 9.2)
    assert s["silos"] == 4


def test_jain_is_one_for_equal_silos_and_one_over_n_when_one_has_everything():
    assert jain_index([0.7] * 5) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0, 0.0, 0.0, 0.0]) == pytest.approx(1 / 5)
    assert jain_index([0.0, 0.0, 0.0]) == 1.0  # all zero counts as equal (module doc)
    assert math.isnan(jain_index([0.5, -0.1]))  # defined for non-negative values only


def test_single_silo_and_empty_input():
    s = fairness_summary([0.42])
    assert (s["min"], s["p10"], s["median"], s["std"], s["jain"]) == (0.42, 0.42, 0.42, 0.0, 1.0)
    with pytest.raises(ValueError, match="at least one value"):
        fairness_summary([])


def test_round_metrics_skip_non_finite_and_missing_values_and_parse_back():
    silos = [
        {"accuracy": 0.5, "entity-f1": 0.2},
        {"accuracy": float("nan"), "entity-f1": 0.4},  # an empty validation split
        {"accuracy": 1.0},
    ]
    out = silo_fairness_metrics(silos, ["accuracy", "entity-f1", "personal-accuracy"])
    assert out["silo-accuracy-silos"] == 2 and out["silo-accuracy-min"] == 0.5
    assert out["silo-accuracy-jain"] == pytest.approx(1.5**2 / (2 * 1.25))
    assert out["silo-entity-f1-median"] == pytest.approx(0.3)
    assert not any("personal" in k for k in out)  # no silo reports it: left out
    parsed = summaries_in({**out, "silo-seconds": 3.0, "accuracy": 0.7})
    assert set(parsed) == {"accuracy", "entity-f1"}
    assert parsed["entity-f1"]["min"] == pytest.approx(0.2)
    assert is_fairness_key("silo-accuracy-p10") and not is_fairness_key("silo-seconds")
