"""The ``dp`` section of the run config: central DP-FedAvg (:mod:`.central`), local DP-SGD
(:mod:`.local`), their accounting (:mod:`.accountant`) and the research switch that seeds
the noise."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fl_core.config import Section


class DPSection(Section):
    """Differential privacy: client-level DP-FedAvg on the server (`dp.central`), DP-SGD in
    every silo (`dp.local`), their budgets and accountant."""

    central: bool = Field(
        False, description="Client-level DP-FedAvg: clip deltas to `dp.clip-norm`, add noise."
    )
    noise_multiplier: float = Field(
        1.0, ge=0, description="Central DP noise σ (noise std = σ·C on the sum)."
    )
    clip_norm: float = Field(
        1.0, gt=0, description="Central DP clipping norm C of every silo's update."
    )
    adaptive_clipping: bool = Field(
        False,
        description="Adapt `dp.clip-norm` towards `dp.target-quantile` (Andrew et al., 2021).",
    )
    target_quantile: float = Field(
        0.5, ge=0, le=1, description="Quantile of update norms adaptive clipping aims for."
    )
    clip_learning_rate: float = Field(0.2, gt=0, description="Adaptive clipping step size.")
    target_epsilon: float = Field(
        0.0, ge=0, description="Central DP budget ε (0 = no budget; ε is still reported)."
    )
    target_delta: float = Field(
        1e-5, gt=0, lt=1, description="δ of (ε, δ)-DP, central and local; must be < 1/records."
    )
    budget_mode: Literal["stop", "calibrate"] = Field(
        "stop",
        description="With a budget: stop before the round that would exceed it, or calibrate "
        "σ up front for the planned rounds.",
    )
    accountant: Literal["rdp", "prv"] = Field(
        "rdp", description="Privacy accountant (Opacus' RDP or PRV)."
    )
    sampling_amplification: bool = Field(
        False,
        description="Central DP only: secret Poisson sampling of silos (each taken with "
        "probability `sampling.fraction-train` from OS entropy; noised sum divided by "
        "`sampling.fraction-train` × silos), accounted as the Poisson-subsampled Gaussian. "
        "Needs `sampling.min-train-nodes` = 1 (the cohort varies, may be empty). false = "
        "every round accounted at rate 1.",
    )
    local: bool = Field(False, description="DP-SGD inside every silo with Opacus.")
    local_noise_multiplier: float = Field(1.0, ge=0, description="Local DP-SGD noise σ.")
    max_grad_norm: float = Field(1.0, gt=0, description="Local DP-SGD per-example clip norm.")
    local_target_epsilon: float = Field(
        0.0,
        ge=0,
        description="Per-silo ε budget over all rounds (0 = use `dp.local-noise-multiplier`).",
    )
    reproducible_noise: bool = Field(
        False,
        description="Research only: seed DP noise and DP sampling (central, local, vertical) "
        "from `seed`, so reruns are identical. Anyone holding the config can then regenerate "
        "and subtract the noise: the run is marked `dp-private = false` and its ε protects "
        "nothing.",
    )
