"""``contribution.*``: per-silo contribution scores and quality-aware aggregation, and the
config-time refusals of combinations where they are unsound (docs/selection.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fl_core.config import Section
from fl_core.errors import ConfigError
from strategies.registry import STRATEGIES

if TYPE_CHECKING:
    from strategies.config import StrategyConfig


class ContributionSection(Section):
    """Per-silo contribution scores (leave-one-out, GTG-Shapley) computed by the server from
    each round's accepted updates, and quality-aware aggregation weights (off by default)."""

    method: Literal["none", "loo", "gtg-shapley", "both"] = Field(
        "none",
        description="Scores per silo and round: leave-one-out, GTG-Shapley (Liu et al., 2022), "
        "both, or none.",
    )
    metric: Literal["loss", "accuracy"] = Field(
        "loss",
        description="Utility of a sub-model on the server's test set: the negated loss, or "
        "accuracy (coarse on a small test set: one row is a step).",
    )
    max_permutations: int = Field(
        50,
        ge=1,
        le=100_000,
        description="GTG-Shapley budget: permutations per round (≤ 2 + this × (silos − 1) "
        "evaluations, never more than 2^silos).",
    )
    truncation: float = Field(
        0.001,
        ge=0,
        le=1,
        description="GTG-Shapley ε: a round (a permutation's tail) whose utility gain is "
        "within ε of the full round's scores 0.",
    )
    weighting: Literal["num-examples", "uniform"] = Field(
        "num-examples",
        description="How a sub-model averages its silos' updates: by their claimed "
        "`num-examples` (as FedAvg) or uniformly (claims cannot inflate a score).",
    )
    quality_weights: bool = Field(
        False,
        description="Mean-based strategies weigh each update by num-examples × the silo's "
        "quality factor (its mean score, relative to the cohort's; see docs/selection.md).",
    )
    weight_cap: float = Field(
        2.0,
        ge=1.0,
        le=1_000.0,
        description="With quality weights, no silo weighs more than this × the round's mean "
        "weight.",
    )
    weight_floor: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="With quality weights, the smallest quality factor (a silo with a score "
        "≤ 0 keeps this share).",
    )


#: Why quality weights are refused for a strategy family that is not mean-based.
_OWN_WEIGHTS = {
    "robust": "robust rules already decide whom to trust (they select, order or reweight "
    "updates by their own criterion), and reweighting their input by scores would let the "
    "scores override that defence",
    "fairness": "it already reweights silos, towards those with the highest loss; "
    "quality weights pull the other way (away from low-scoring silos) and would undo its "
    "fairness objective",
}


def check_contribution(cfg: StrategyConfig) -> None:
    """Raise ``ConfigError`` when ``cfg`` asks for contribution scores or quality weights
    where no per-silo update exists, or where they would undo another guarantee."""
    section = cfg.contribution
    if section.method == "none":
        if section.quality_weights:
            raise ConfigError(
                "run-config 'contribution.quality-weights' = true weighs silos by their "
                "contribution scores, but 'contribution.method' = 'none' computes none; set "
                "contribution.method = 'gtg-shapley' (or 'loo', 'both')."
            )
        return
    key = f"run-config 'contribution.method' = '{section.method}'"
    if cfg.secagg.enabled:
        raise ConfigError(
            f"{key} cannot be combined with 'secagg.enabled' = true: secure aggregation hides "
            "each silo's update from the server, which sees only their sum, so there is no "
            "per-silo sub-model to score. Set contribution.method = 'none' or "
            "secagg.enabled = false."
        )
    if cfg.dp.central:
        raise ConfigError(
            f"{key} cannot be combined with 'dp.central' = true: the scores are computed from "
            "each silo's unclipped, unnoised update and published per silo, which central DP "
            "(a guarantee about the noised aggregate only) does not cover. Set "
            "contribution.method = 'none', or use 'dp.local' = true instead."
        )
    if cfg.mode != "horizontal":
        raise ConfigError(
            f"{key} scores horizontal updates; in mode 'vertical' no silo sends a model "
            "update. Set contribution.method = 'none'."
        )
    family = STRATEGIES.get(cfg.strategy).family
    if section.quality_weights and family != "mean-based":
        why = _OWN_WEIGHTS.get(family, f"its family '{family}' does not weigh by num-examples")
        raise ConfigError(
            f"run-config 'contribution.quality-weights' = true cannot be used with strategy "
            f"'{cfg.strategy}': {why}. Use one of: "
            + ", ".join(STRATEGIES.names(family="mean-based"))
            + ", or set contribution.quality-weights = false."
        )
