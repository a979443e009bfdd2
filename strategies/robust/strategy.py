"""Thin Flower strategies around the pure robust aggregation rules.

:class:`RobustAggregation` is a FedAvg whose weighted average is replaced by
``rule ∘ pre-aggregators`` applied to the stacked model *deltas* (reply − global model),
the aggregate then added to the global model. Working on deltas makes centred clipping's
centre (the previous aggregate) and FLTrust's server update meaningful; for the other
rules it is equivalent to aggregating the models (they are translation-equivariant).

The rules receive uniform weights unless ``robust.weights = "capped"``: a silo's
``num-examples`` is a claim, and a Byzantine silo that claims 1 000 × the examples would
otherwise *be* the weighted median (see :mod:`strategies.robust.weights`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from logging import INFO
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from strategies.flatten import Layout, flatten, records_of, stack_deltas, unflatten
from strategies.robust.preaggregators import compose
from strategies.robust.weights import RobustWeights, trusted_weights
from strategies.round_state import RoundState, RoundStateUser

#: Computes the server's own update (a delta row) from the current global model (FLTrust).
ServerUpdateFn = Callable[[ArrayRecord, int], ArrayRecord]


class RobustAggregation(RoundStateUser, FedAvg):
    """FedAvg with a robust aggregation rule on stacked updates.

    The silos' ``num-examples`` are claims a Byzantine silo can inflate, so by default the
    rule gets uniform weights (``None``), as Flower's FedMedian, Krum and Bulyan do;
    ``weights = "capped"`` passes the claims capped at the cohort's median claim.

    Parameters
    ----------
    rule : callable
        ``rule(updates (n×d), weights (n,), **params) -> (d,)``, e.g. one of
        :data:`strategies.robust.registry.RULES`.
    pre_aggregators : sequence of callables
        Applied in order before ``rule`` (e.g. NNM, bucketing).
    rule_params : dict
        Keyword parameters for the rule and pre-aggregators (e.g. ``num_byzantine``).
    use_previous_as_center : bool
        Pass the previous round's aggregate as ``center`` (centred clipping).
    server_update_fn : callable, optional
        For FLTrust: ``fn(global_arrays, server_round)`` returns the server's model
        trained on its root data from the current global model; its delta is passed as
        ``server_update``.
    seed : int
        Seeds the generator handed to randomised pre-aggregators (bucketing).
    weights : {"uniform", "capped"}
        How the claimed ``num-examples`` weigh in the rule (see
        :func:`strategies.robust.weights.trusted_weights`).
    round_state : RoundState, optional
        The chain's shared round state (its global model is what replies are updates
        of); ``None`` = its own, recorded in ``configure_train``.
    **fedavg_kwargs
        Sampling and metric arguments of :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(
        self,
        rule: Callable[..., torch.Tensor],
        *,
        pre_aggregators: Sequence[Callable[..., Any]] = (),
        rule_params: dict[str, Any] | None = None,
        use_previous_as_center: bool = False,
        server_update_fn: ServerUpdateFn | None = None,
        seed: int = 0,
        weights: RobustWeights = "uniform",
        round_state: RoundState | None = None,
        **fedavg_kwargs: Any,
    ) -> None:
        trusted_weights([1.0], weights)  # refuse an unknown mode at construction
        super().__init__(**fedavg_kwargs)
        self.aggregate = compose(list(pre_aggregators), rule)
        self.rule_params = dict(rule_params or {})
        self.use_previous_as_center = use_previous_as_center
        self.server_update_fn = server_update_fn
        self.seed = seed
        self.weights = weights
        self.init_round_state(round_state)
        self._previous: torch.Tensor | None = None

    def summary(self) -> None:
        """Log the rule and its parameters."""
        log(
            INFO,
            "\t├──> Robust aggregation: %s %s, %s weights",
            self.aggregate.__name__,
            self.rule_params,
            self.weights,
        )
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ):
        """Record the global model the replies will be deltas against (unless the chain
        records it)."""
        self.begin_round(server_round, "train", arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Robustly aggregate the deltas of the valid replies."""
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        if not valid or self.round.arrays is None:
            return None, None
        new_global = self.aggregate_records(
            server_round,
            [records_of(m.content, ArrayRecord)[0] for m in valid],
            [float(records_of(m.content, MetricRecord)[0][self.weighted_by_key]) for m in valid],
        )
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return new_global, metrics

    def aggregate_records(
        self, server_round: int, records: list[ArrayRecord], claimed: list[float]
    ) -> ArrayRecord:
        """The new global model from client models ``records`` whose silos claim
        ``claimed`` examples (the pure-function path), updates of the round's global model."""
        current = self.round.arrays
        layout = Layout.of(current)
        # Rows the update validation decoded this round are reused, not decoded again.
        deltas = stack_deltas(records, current, layout)
        reference = flatten(current, layout)
        params = dict(self.rule_params)
        if self.use_previous_as_center:
            params["center"] = self._previous
        if self.server_update_fn is not None:
            trained = self.server_update_fn(current, server_round)
            params["server_update"] = flatten(trained, layout) - reference
        if "generator" in params:
            params["generator"] = torch.Generator().manual_seed(self.seed * 100_003 + server_round)
        weights = trusted_weights(claimed, self.weights)
        aggregate = self.aggregate(deltas, weights, **params)
        if aggregate.untyped_storage().data_ptr() == deltas.untyped_storage().data_ptr():
            aggregate = aggregate.clone()  # kept across rounds: must not alias the round matrix
        self._previous = aggregate
        return unflatten(reference + aggregate, layout)
