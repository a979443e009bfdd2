"""The Flower side of contribution scoring: a wrapper that scores each round's accepted
updates (:mod:`strategies.contribution.scores`) and, optionally, weighs them by quality.

It sits inside the update validation, so it sees exactly the decoded, validated updates the
strategy aggregates, in partition order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from fl_core.seeding import derive_seed
from strategies.contribution.config import ContributionSection
from strategies.contribution.scores import (
    CachedUtility,
    gtg_shapley,
    leave_one_out,
    quality_weights,
    submodel_utility,
)
from strategies.flatten import Layout, flatten, records_of, stack_deltas, unflatten
from strategies.round_state import RoundState
from strategies.wrappers import StrategyWrapper, reply_order_key

__all__ = ["SCORE_KEYS", "ContributionScores", "ScoresCallback"]

#: Weight metric of Flower's mean-based strategies (their ``weighted_by_key``).
WEIGHT_KEY = "num-examples"
#: Score name per method, as reported per silo.
SCORE_KEYS = {"loo": ("loo",), "gtg-shapley": ("shapley",), "both": ("loo", "shapley")}

#: ``(round, {partition: {"loo": …, "shapley": …[, "weight": …]}}, evaluations)`` after a
#: round is scored (``weight``: its quality weight, with ``contribution.quality-weights``).
ScoresCallback = Callable[[int, dict[int, dict[str, float]], int], None]


class ContributionScores(StrategyWrapper):
    """Scores every silo of every round and keeps per-silo totals over the run.

    ``utility_fn(arrays)`` is the utility of a candidate global model (the app's: its
    negated loss, or accuracy, on the server's test set: ``contribution.metric``). Each
    round, the sub-models "previous global + weighted mean of a subset's updates" are
    evaluated as
    ``section.method`` asks, with GTG-Shapley's permutations seeded by
    ``(seed, "contribution", round)``: contribution scores are no privacy mechanism, a rerun
    scores the same. :attr:`totals` (``{partition: {"rounds", "loo", "shapley"}}``: the sum
    of the silo's per-round scores over the rounds it took part in) is this layer's
    checkpointed state.

    With ``section.quality_weights``, the replies' ``num-examples`` are replaced, for the
    inner strategy's aggregation only, by :func:`~strategies.contribution.scores.quality_weights`
    of the claims and the silos' mean scores so far (this round included); the round's
    ``num-examples`` metric stays the claimed total.
    """

    def __init__(
        self,
        inner: Strategy,
        section: ContributionSection,
        seed: int,
        utility_fn: Callable[[ArrayRecord], float],
        on_scores: ScoresCallback | None = None,
        *,
        round_state: RoundState | None = None,
    ) -> None:
        super().__init__(inner, round_state=round_state)
        self.section = section
        self.seed = seed
        self.utility_fn = utility_fn
        self.on_scores = on_scores
        self.totals: dict[int, dict[str, float]] = {}

    @property
    def score_keys(self) -> tuple[str, ...]:
        return SCORE_KEYS[self.section.method]

    def configure_train(self, server_round, arrays, config, grid):
        self.begin_round(server_round, "train", arrays)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        ok = sorted((m for m in replies if not m.has_error()), key=reply_order_key)
        reference = self.round.arrays  # the global model the replies are updates of
        if not ok or reference is None:
            return self.inner.aggregate_train(server_round, replies)
        scores, evaluations = self.score_round(server_round, ok, reference)
        for pid, values in scores.items():
            total = self.totals.setdefault(pid, {"rounds": 0.0})
            total["rounds"] += 1
            for key, value in values.items():
                total[key] = total.get(key, 0.0) + value
        if self.section.quality_weights:
            weights = self.quality_weights(ok)
            for msg, weight in zip(ok, weights, strict=True):
                scores[reply_order_key(msg)[0]]["weight"] = weight
        if self.on_scores is not None:
            self.on_scores(server_round, scores, evaluations)
        if self.section.quality_weights:
            with _weighted(ok, weights) as claimed:
                arrays, metrics = self.inner.aggregate_train(server_round, replies)
            if metrics is not None and WEIGHT_KEY in metrics:
                metrics[WEIGHT_KEY] = claimed
        else:
            arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if metrics is not None:
            metrics["contribution-evaluations"] = evaluations
        return arrays, metrics

    def score_round(
        self, server_round: int, replies: list[Message], reference: ArrayRecord
    ) -> tuple[dict[int, dict[str, float]], int]:
        """``({partition: {score: value}}, utility evaluations)`` of one round's replies."""
        layout = Layout.of(reference)
        records = [records_of(m.content, ArrayRecord)[0] for m in replies]
        deltas = stack_deltas(records, reference, layout).clone()
        claims = [_claim(m) for m in replies]
        weights = claims if self.section.weighting == "num-examples" else [1.0] * len(replies)
        base = flatten(reference, layout)

        def evaluate(row) -> float:
            return float(self.utility_fn(unflatten(row, layout)))

        utility = CachedUtility(submodel_utility(base, deltas, weights, evaluate))
        players = list(range(len(replies)))
        pids = [reply_order_key(m)[0] for m in replies]
        scores: dict[int, dict[str, float]] = {pid: {} for pid in pids}
        if "loo" in self.score_keys:
            for i, value in leave_one_out(players, utility).items():
                scores[pids[i]]["loo"] = value
        if "shapley" in self.score_keys:
            rng = np.random.default_rng(derive_seed(self.seed, "contribution", server_round))
            shapley = gtg_shapley(
                players,
                utility,
                rng=rng,
                max_permutations=self.section.max_permutations,
                truncation=self.section.truncation,
            )
            for i, value in shapley.items():
                scores[pids[i]]["shapley"] = value
        return scores, utility.evaluations

    def mean_score(self, pid: int) -> float | None:
        """The silo's mean per-round score so far (Shapley if computed, else LOO)."""
        total = self.totals.get(pid)
        if not total or not total["rounds"]:
            return None
        return total[self.score_keys[-1]] / total["rounds"]

    def quality_weights(self, replies: list[Message]) -> list[float]:
        """The aggregation weights of ``replies``: their claimed ``num-examples`` × the
        silos' quality factors, capped (:func:`~strategies.contribution.scores.quality_weights`)."""
        return quality_weights(
            [_claim(m) for m in replies],
            [self.mean_score(reply_order_key(m)[0]) for m in replies],
            cap=self.section.weight_cap,
            floor=self.section.weight_floor,
        )

    def own_state(self):
        return {"totals": {pid: dict(t) for pid, t in self.totals.items()}}

    def load_own_state(self, state: Mapping):
        self.totals = {int(pid): dict(t) for pid, t in state["totals"].items()}


@contextlib.contextmanager
def _weighted(replies: list[Message], weights: list[float]) -> Iterator[float]:
    """``num-examples`` of ``replies`` set to ``weights`` inside the block (yields the
    claimed total), restored afterwards: the layers outside see the claims as received."""
    records = [records_of(m.content, MetricRecord)[0] for m in replies]
    claims = [record[WEIGHT_KEY] for record in records]
    for record, weight in zip(records, weights, strict=True):
        record[WEIGHT_KEY] = weight
    try:
        yield float(sum(float(c) for c in claims))
    finally:
        for record, claim in zip(records, claims, strict=True):
            record[WEIGHT_KEY] = claim


def _claim(msg: Message) -> float:
    metrics = records_of(msg.content, MetricRecord)
    return float(metrics[0].get(WEIGHT_KEY, 0.0)) if metrics else 0.0
