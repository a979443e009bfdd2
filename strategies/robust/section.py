"""The ``robust`` section of the run config: parameters of the robust aggregation rules
(Flower's and ours, :mod:`strategies.robust.factories`, :mod:`strategies.flower_builtin`)
and the checks every update passes (:mod:`strategies.validation`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fl_core.config import Section


class RobustSection(Section):
    """Robust aggregation (Flower's and ours) and the checks every update passes."""

    trim_beta: float = Field(
        0.2, ge=0, lt=0.5, description="Fraction trimmed at each end (FedTrimmedAvg)."
    )
    num_byzantine: int = Field(
        0, ge=0, description="Assumed Byzantine silos f (Krum, MultiKrum, Bulyan)."
    )
    num_selected: int = Field(0, ge=0, description="Updates MultiKrum averages (0 = n - f).")
    pre_aggregator: Literal["auto", "none", "nnm", "bucketing", "nnm+bucketing"] = Field(
        "auto",
        description="Pre-aggregation in front of our robust rules (NNM, bucketing). `auto`: "
        "the one the robustness sweep measured best for the rule, none while "
        "`robust.num-byzantine` = 0 (docs/robustness.md, 'The default pre-aggregator').",
    )
    bucket_size: int = Field(2, ge=1, description="Updates averaged per bucket (bucketing).")
    weights: Literal["uniform", "capped"] = Field(
        "uniform",
        description="Weights of the robust rules. A silo's `num-examples` is a claim a "
        "Byzantine silo can inflate (one silo claiming 1 000× the examples *is* a weighted "
        "median), so `uniform` (as Flower's FedMedian, Krum, Bulyan) ignores it; `capped` "
        "weights by the claims, each capped at the cohort's median claim.",
    )
    cclip_tau: float = Field(
        0.0,
        ge=0,
        description="Clipping radius τ of centred clipping; 0 = per round, the median distance "
        "of the updates from the previous aggregate (adapts to the update scale).",
    )
    clip_norm: float = Field(
        1.0, gt=0, description="Update-norm bound C of norm-clip (DP clipping: `dp.clip-norm`)."
    )
    rule_params: str = Field(
        "",
        description="Parameters of a rule that declares a section of its own (e.g. a rule "
        "from another package): `name=value,name=value`, checked against that section "
        "(docs/extending.md).",
    )
    fltrust_root_size: int = Field(
        100, ge=1, description="Rows of the server's root data set (FLTrust)."
    )
    max_update_norm_ratio: float = Field(
        3.0,
        ge=0,
        description="Bound on an update's norm: this × the cohort's median update norm "
        "(0 = off); what happens above it: `robust.norm-outliers`.",
    )
    norm_outliers: Literal["clip", "reject"] = Field(
        "clip",
        description="An update above the norm bound is scaled down to it (`clip`: no honest "
        "silo is dropped, a boosted one loses its boost) or dropped (`reject`).",
    )
    max_update_bytes: int = Field(
        0,
        ge=0,
        description="Reject a reply whose payload exceeds this many bytes (0 = twice the "
        "global model's size + 1 MiB).",
    )
