"""Heterogeneous silos in simulation: speeds, dropouts and data-quality defects.

A simulation aid for measuring participant selection (docs/selection.md), off by default:
with every ``simulation.*`` key at its default a silo behaves exactly as before. Everything
is seeded by ``(seed, purpose, partition[, round])``, so a rerun sees the same slow silos,
the same dropouts and the same noisy rows.

* **Speed.** Silo p's slowness s_p ≥ 1 is log-uniform in [1, ``simulation.speed-spread``].
  Its round takes ``simulation.seconds-per-example`` × examples × local epochs × s_p
  simulated seconds, reported with its update as the train metric ``sim-seconds``; with
  ``simulation.sleep = true`` the silo also sleeps that long (minus what training took).
* **Dropout.** In each round a silo fails with probability ``simulation.dropout`` (an error
  reply: the server sees a silo that died mid-round).
* **Data quality.** ``simulation.noisy-silos`` silos (a seeded choice) get
  ``simulation.label-noise`` of their training labels replaced by another class, and
  ``simulation.duplicate-rows`` × their rows appended again as duplicates. Validation rows
  stay clean (they measure the model, not the defect).

A SuperNode's node config overrides its own profile in a deployment: ``slowness``,
``dropout``, ``label-noise``, ``duplicate-rows``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import Field

from fl_core.config import Section
from fl_core.errors import ConfigError
from fl_core.seeding import derive_seed
from tasks.base import ArrayDataset

__all__ = [
    "SiloProfile",
    "SimulatedDropout",
    "SimulationSection",
    "apply_defect",
    "noisy_partitions",
    "silo_profile",
]


class SimulationSection(Section):
    """``simulation.*``: heterogeneous silos for simulation (off by default)."""

    speed_spread: float = Field(
        1.0,
        ge=1.0,
        le=1_000.0,
        description="Slowest/fastest silo: slowness log-uniform in [1, this] per silo "
        "(1 = all equal; reported as `sim-seconds`).",
    )
    seconds_per_example: float = Field(
        0.001,
        ge=0.0,
        le=60.0,
        description="Simulated seconds of one example-epoch at slowness 1.",
    )
    sleep: bool = Field(
        False,
        description="Silos really sleep their simulated seconds (else they only report them).",
    )
    dropout: float = Field(
        0.0, ge=0.0, le=1.0, description="Probability that a silo fails in a round."
    )
    noisy_silos: int = Field(
        0, ge=0, le=100_000, description="Silos with a data-quality defect (a seeded choice)."
    )
    label_noise: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="Share of a noisy silo's training labels replaced by another class.",
    )
    duplicate_rows: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="A noisy silo's rows appended again, × its row count (0.5 = half).",
    )


@dataclass(frozen=True)
class SiloProfile:
    """One silo's simulated behaviour."""

    slowness: float = 1.0
    dropout: float = 0.0
    label_noise: float = 0.0
    duplicate_rows: float = 0.0

    @property
    def defective(self) -> bool:
        return self.label_noise > 0 or self.duplicate_rows > 0


class SimulatedDropout(RuntimeError):
    """Raised by a silo that the simulation drops out of a round."""


def noisy_partitions(section: SimulationSection, num_partitions: int, seed: int) -> list[int]:
    """The partitions with a data-quality defect (a seeded choice)."""
    if section.noisy_silos > num_partitions:
        raise ConfigError(
            f"run-config 'simulation.noisy-silos' = {section.noisy_silos} exceeds the "
            f"{num_partitions} silos; set it to at most {num_partitions}"
        )
    return list(_noisy_partitions(section.noisy_silos, num_partitions, seed))


@lru_cache(maxsize=64)
def _noisy_partitions(count: int, num_partitions: int, seed: int) -> tuple[int, ...]:
    # every silo's profile asks, every train message: draw the permutation once
    rng = np.random.default_rng(derive_seed(seed, "noisy-silos"))
    return tuple(sorted(rng.permutation(num_partitions)[:count].tolist()))


def _node_float(node_config: Mapping[str, Any], key: str, default: float, low: float, high: float):
    if key not in node_config:
        return default
    try:
        value = float(node_config[key])
    except (TypeError, ValueError):
        value = math.nan
    if not (low <= value <= high):
        raise ConfigError(
            f"node config '{key}' = {node_config[key]!r} must be a number in [{low}, {high}]; "
            f'fix the SuperNode\'s --node-config "{key}=…"'
        )
    return value


def silo_profile(
    section: SimulationSection,
    seed: int,
    partition: int,
    num_partitions: int,
    node_config: Mapping[str, Any] | None = None,
) -> SiloProfile:
    """Partition ``partition``'s profile from the run config, overridden by its node config."""
    spread = section.speed_spread
    u = np.random.default_rng(derive_seed(seed, "speed", partition)).random()
    slowness = float(spread**u) if spread > 1 else 1.0
    noisy = partition in noisy_partitions(section, num_partitions, seed)
    node = node_config or {}
    return SiloProfile(
        slowness=_node_float(node, "slowness", slowness, 1.0, 1e6),
        dropout=_node_float(node, "dropout", section.dropout, 0.0, 1.0),
        label_noise=_node_float(node, "label-noise", section.label_noise if noisy else 0.0, 0, 1),
        duplicate_rows=_node_float(
            node, "duplicate-rows", section.duplicate_rows if noisy else 0.0, 0.0, 10.0
        ),
    )


def drops_out(profile: SiloProfile, seed: int, partition: int, server_round: int) -> bool:
    """Whether the silo fails this round (seeded by partition and round)."""
    if profile.dropout <= 0:
        return False
    rng = np.random.default_rng(derive_seed(seed, "dropout", partition, server_round))
    return bool(rng.random() < profile.dropout)


def apply_defect(
    profile: SiloProfile, data: ArrayDataset, num_classes: int, seed: int, partition: int
) -> ArrayDataset:
    """``data`` with the profile's label noise and duplicated rows (seeded); the same
    object when the profile has no defect."""
    if not profile.defective:
        return data
    rng = np.random.default_rng(derive_seed(seed, "defect", partition))
    x, y = data.x, data.y.copy()
    if profile.label_noise > 0:
        labelled = np.flatnonzero(y.reshape(-1) >= 0)  # padding (< 0) stays padding
        flip = rng.permutation(labelled)[: round(profile.label_noise * len(labelled))]
        flat = y.reshape(-1)
        # another class, uniformly: shift by 1 … num_classes − 1
        flat[flip] = (flat[flip] + rng.integers(1, num_classes, size=len(flip))) % num_classes
    if profile.duplicate_rows > 0:
        extra = rng.integers(0, len(x), size=round(profile.duplicate_rows * len(x)))
        x = np.concatenate([x, x[extra]])
        y = np.concatenate([y, y[extra]])
    return ArrayDataset(x, y)


def sim_seconds(
    section: SimulationSection, profile: SiloProfile, examples: int, epochs: int
) -> float:
    """The simulated seconds of one round of training at this silo's speed."""
    return section.seconds_per_example * examples * epochs * profile.slowness


def pace(seconds: float, started: float) -> None:
    """Sleep until ``seconds`` have passed since ``started`` (``time.perf_counter``)."""
    left = seconds - (time.perf_counter() - started)
    if left > 0:
        time.sleep(left)
