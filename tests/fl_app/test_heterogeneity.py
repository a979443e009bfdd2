"""Heterogeneous silos for simulation: seeded, exact, off by default."""

from __future__ import annotations

import numpy as np
import pytest

from fl_app.config import RunConfig
from fl_app.heterogeneity import (
    SimulationSection,
    apply_defect,
    drops_out,
    noisy_partitions,
    silo_profile,
)
from fl_core.errors import ConfigError
from tasks.base import ArrayDataset


def test_defaults_change_nothing():
    section = RunConfig().simulation
    data = ArrayDataset(np.zeros((10, 3), np.float32), np.arange(10) % 3)
    for p in range(5):
        profile = silo_profile(section, 42, p, 5)
        assert profile.slowness == 1.0 and not profile.defective and profile.dropout == 0
        assert apply_defect(profile, data, 3, 42, p) is data
        assert not drops_out(profile, 42, p, 1)


def test_speeds_are_seeded_and_span_the_spread():
    section = SimulationSection(speed_spread=10.0)
    speeds = [silo_profile(section, 7, p, 200).slowness for p in range(200)]
    assert speeds == [silo_profile(section, 7, p, 200).slowness for p in range(200)]
    assert 1.0 <= min(speeds) < 1.2 and 8.5 < max(speeds) <= 10.0
    assert speeds != [silo_profile(section, 8, p, 200).slowness for p in range(200)]


def test_label_noise_replaces_exactly_that_share_with_another_class_and_keeps_padding():
    section = SimulationSection(noisy_silos=1, label_noise=0.6, duplicate_rows=0.5)
    (noisy,) = noisy_partitions(section, 4, 3)
    profile = silo_profile(section, 3, noisy, 4)
    y = np.arange(200) % 10
    data = ArrayDataset(np.arange(200, dtype=np.float32)[:, None], y)
    out = apply_defect(profile, data, 10, 3, noisy)
    assert len(out) == 300  # half of the rows again
    changed = out.y[:200] != y
    assert changed.sum() == 120  # exactly 60 %, each to a different class
    assert np.array_equal(out.x[:200], data.x)
    dup = out.x[200:, 0].astype(int)
    assert np.array_equal(out.y[200:], out.y[dup])  # duplicates of (noisy) rows
    clean = [p for p in range(4) if p != noisy]
    assert all(not silo_profile(section, 3, p, 4).defective for p in clean)
    tags = np.array([[1, 2, -100], [0, -100, -100]])
    seq = apply_defect(silo_profile(SimulationSection(noisy_silos=1, label_noise=1.0), 3, noisy, 4),
                       ArrayDataset(np.zeros((2, 3)), tags), 3, 3, noisy)  # fmt: skip
    assert (seq.y[tags < 0] == -100).all() and (seq.y[tags >= 0] != tags[tags >= 0]).all()


def test_dropout_is_seeded_per_silo_and_round():
    profile = silo_profile(SimulationSection(dropout=0.3), 1, 0, 4)
    draws = [drops_out(profile, 1, p, r) for p in range(20) for r in range(1, 21)]
    assert draws == [drops_out(profile, 1, p, r) for p in range(20) for r in range(1, 21)]
    assert 0.2 < np.mean(draws) < 0.4


def test_node_config_overrides_and_bad_values_name_the_key():
    section = SimulationSection()
    profile = silo_profile(section, 0, 1, 4, {"slowness": 5.0, "label-noise": 0.3})
    assert profile.slowness == 5.0 and profile.label_noise == 0.3
    with pytest.raises(ConfigError, match=r"node config 'dropout' = 'x'.*--node-config"):
        silo_profile(section, 0, 1, 4, {"dropout": "x"})
    with pytest.raises(ConfigError, match=r"simulation.noisy-silos' = 5 exceeds the 4 silos"):
        noisy_partitions(SimulationSection(noisy_silos=5), 4, 0)
