"""Contribution of each silo: leave-one-out and GTG-Shapley scores per round
(:mod:`strategies.contribution.scores`, pure functions), the wrapper that computes them from
the round's accepted updates and optionally weighs the aggregation by them
(:mod:`strategies.contribution.wrapper`), and the ``contribution.*`` section with its
config checks (:mod:`strategies.contribution.config`). See docs/selection.md."""

from strategies.contribution.config import ContributionSection, check_contribution
from strategies.contribution.scores import (
    gtg_shapley,
    leave_one_out,
    quality_factors,
    quality_weights,
)

__all__ = [
    "ContributionSection",
    "check_contribution",
    "gtg_shapley",
    "leave_one_out",
    "quality_factors",
    "quality_weights",
]
