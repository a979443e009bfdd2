"""Strategy wrappers the app puts around any registered strategy.

* :class:`SeededSampling` makes a run reproducible: each round's client sample is drawn
  from a generator seeded by (seed, round, phase) over nodes ordered by partition id, and
  replies are aggregated in partition order (float sums depend on order). The seed is
  public, so this sample is no secret: DP-FedAvg's secret Poisson sampling
  (``dp.sampling-amplification``) draws its cohort itself, from OS entropy, inside it.
* :class:`RoundReporter` hands each round's aggregated metrics to a callback (the run's
  metrics sinks) as soon as the round produces them, with each silo's own metrics and,
  for client-side evaluation, their fairness summary (:mod:`strategies.fairness`).
* :class:`ValidatedUpdates` drops malformed or outlying updates before aggregation.

Both delegate everything else to the wrapped strategy, as Flower's DP wrappers do.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvgM, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt
from flwr.supercore import log
from pydantic import Field

from fl_core.config import Section, transient
from fl_core.records import META_KEY
from strategies.fairness import silo_fairness_metrics
from strategies.flatten import records_of, shared_stack
from strategies.robust.strategy import RobustAggregation
from strategies.round_state import RoundState, RoundStateUser
from strategies.validation import (
    Rejection,
    filter_evaluate_replies,
    filter_replies,
    keep_dtypes,
)


class SamplingSection(Section):
    """Which silos take part in a round, how many are needed, and how long the server
    waits for them."""

    fraction_train: float = Field(
        1.0, gt=0, le=1, description="Fraction of connected silos sampled for training."
    )
    fraction_evaluate: float = Field(
        1.0, ge=0, le=1, description="Fraction sampled for client-side evaluation (0 = off)."
    )
    min_train_nodes: int = Field(2, ge=1, description="Minimum silos per training round.")
    min_evaluate_nodes: int = Field(2, ge=0, description="Minimum silos per evaluation round.")
    min_available_nodes: int = transient(2, ge=1, description="Silos to wait for before round 1.")
    round_timeout: float = transient(
        3600.0, gt=0, description="Seconds to wait for replies in a round."
    )
    straggler_timeout: float = transient(
        0.0,
        ge=0,
        description="Once a round has `sampling.min-train-nodes` (`sampling.min-evaluate-nodes`) "
        "replies, wait at most this many more seconds for the rest (0 = wait for all or "
        "`sampling.round-timeout`).",
    )
    round_retries: int = transient(
        0,
        ge=0,
        le=100,
        description="Times a training round with fewer than `sampling.min-train-nodes` replies "
        "is re-sent to the missing silos before the run stops, naming them.",
    )
    reply_poll_interval: float = transient(
        0.0,
        ge=0,
        le=10,
        description="0 = Flower's own reply loop (one pull, then 3 s sleeps); > 0 = poll "
        "after this many seconds, growing ×1.5 to 0.5 s (see docs/efficiency.md: slower "
        "for small, fast rounds on a busy machine).",
    )


class StrategyWrapper(RoundStateUser, Strategy):
    """Delegates every Strategy method to ``inner``. ``self.round`` is the round's state
    (:class:`strategies.round_state.RoundState`): ``round_state`` when the chain shares
    one, else the wrapper's own."""

    def __init__(self, inner: Strategy, *, round_state: RoundState | None = None) -> None:
        self.inner = inner
        self.init_round_state(round_state)

    def __getattr__(self, name: str):
        # Reached only for attributes the wrapper lacks (e.g. a strategy's parameters).
        return getattr(self.__dict__["inner"], name)

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    # -- state between rounds (checkpoints)
    def own_state(self) -> dict[str, Any]:
        """What this layer itself keeps between rounds (nothing, unless overridden)."""
        return {}

    def load_own_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`own_state`."""
        if state:
            raise ValueError(f"{type(self).__qualname__} keeps no state; got {sorted(state)}")

    def state_dict(self) -> dict[str, Any]:
        """``{"class": name, "state": own state, "inner": inner strategy's state}``: the
        whole chain's state from here inwards (see :func:`strategy_state`)."""
        return {
            "class": type(self).__qualname__,
            "state": self.own_state(),
            "inner": strategy_state(self.inner),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` into an identically built chain."""
        _check_class(self, state)
        self.load_own_state(state["state"])
        load_strategy_state(self.inner, state["inner"])


def _inner_state_attributes() -> tuple[tuple[type, tuple[str, ...]], ...]:
    """The attributes the innermost strategies keep between rounds, by class: the one
    place that knows them (Flower's FedOpt family and FedAvgM; our robust rules'
    previous aggregate, centred clipping's centre)."""
    return (
        (FedOpt, ("m_t", "v_t", "current_arrays")),
        (FedAvgM, ("momentum_vector", "current_arrays")),
        (RobustAggregation, ("_previous",)),
    )


def _state_names(strategy: Strategy) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for cls, attributes in _inner_state_attributes():
        if isinstance(strategy, cls):
            names.update(dict.fromkeys(attributes))
    return tuple(names)


def _check_class(strategy: Strategy, state: Mapping[str, Any]) -> None:
    if state.get("class") != type(strategy).__qualname__:
        raise ValueError(
            f"state of a {state.get('class')!r} cannot be loaded into a "
            f"{type(strategy).__qualname__!r}"
        )


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """``{"class": name, "state": {...}}`` (and ``"inner"`` for a wrapper): what
    ``strategy`` keeps between rounds, for a checkpoint. Wrappers answer for themselves
    (:meth:`StrategyWrapper.state_dict`); an innermost strategy by
    :func:`_inner_state_attributes`."""
    if isinstance(strategy, StrategyWrapper):
        return strategy.state_dict()
    attrs = vars(strategy)
    state = {name: attrs[name] for name in _state_names(strategy) if name in attrs}
    return {"class": type(strategy).__qualname__, "state": state}


def load_strategy_state(strategy: Strategy, state: Mapping[str, Any]) -> None:
    """Restore :func:`strategy_state` into an identically built strategy."""
    if isinstance(strategy, StrategyWrapper):
        strategy.load_state_dict(state)
        return
    _check_class(strategy, state)
    names = _state_names(strategy)
    if unknown := sorted(set(state["state"]) - set(names)):
        raise ValueError(f"{type(strategy).__qualname__} keeps no state {unknown}")
    for name, value in state["state"].items():
        setattr(strategy, name, value)


class _OrderedGrid:
    """A Grid view whose ``get_node_ids`` lists nodes in partition order."""

    def __init__(self, grid: Grid, order: Mapping[int, int]) -> None:
        self._grid = grid
        self._order = order

    def get_node_ids(self) -> list[int]:
        return sorted(self._grid.get_node_ids(), key=lambda n: (self._order.get(n, 1 << 62), n))

    def __getattr__(self, name: str):
        return getattr(self._grid, name)


def reply_order_key(msg: Message) -> tuple[int, int]:
    """Sort key for replies: the silo's partition id (from the reply's meta record)."""
    pid = 1 << 62
    if not msg.has_error() and isinstance(meta := msg.content.get(META_KEY), ConfigRecord):
        pid = int(meta.get("partition-id", pid))
    return (pid, msg.metadata.src_node_id)


class SeededSampling(StrategyWrapper):
    """Seeded client sampling and partition-ordered aggregation (see module doc)."""

    def __init__(
        self,
        inner: Strategy,
        seed: int,
        node_partitions: Mapping[int, int] | None = None,
        *,
        round_state: RoundState | None = None,
    ) -> None:
        """``node_partitions`` (``{node_id: partition_id}``) when used alone; in a chain
        the roster of the shared ``round_state``."""
        super().__init__(inner)
        self.init_round_state(round_state, roster=node_partitions)
        self.seed = seed

    def _sampled(self, phase: str, server_round: int, call: Callable[[], Iterable[Message]]):
        # Flower's sample_nodes draws with the module-level `random`; give it a fresh,
        # seeded state for this call and restore the caller's state afterwards.
        saved = random.getstate()
        random.seed(f"{self.seed}/{phase}/{server_round}")
        try:
            return list(call())
        finally:
            random.setstate(saved)

    def configure_train(self, server_round, arrays, config, grid):
        ordered = _OrderedGrid(grid, self.round.roster)
        return self._sampled(
            "train",
            server_round,
            lambda: self.inner.configure_train(server_round, arrays, config, ordered),
        )

    def configure_evaluate(self, server_round, arrays, config, grid):
        ordered = _OrderedGrid(grid, self.round.roster)
        return self._sampled(
            "evaluate",
            server_round,
            lambda: self.inner.configure_evaluate(server_round, arrays, config, ordered),
        )

    def aggregate_train(self, server_round, replies):
        return self.inner.aggregate_train(server_round, sorted(replies, key=reply_order_key))

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round, sorted(replies, key=reply_order_key))


RoundCallback = Callable[[int, str, Mapping[str, float]], None]


SiloCallback = Callable[[int, str, int, Mapping[str, float]], None]


def silo_metrics(replies: Iterable[Message]) -> list[tuple[int, dict[str, float]]]:
    """``(partition_id, metrics)`` of every successful reply that carries metrics."""
    out = []
    for msg in replies:
        if msg.has_error() or not (records := records_of(msg.content, MetricRecord)):
            continue
        metrics = records[0]
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        out.append((reply_order_key(msg)[0], values))
    return out


#: Per-silo runtime metric: seconds from the instruction's creation on the server to the
#: silo's reply (both Flower ``created_at`` stamps; across machines it includes their clock
#: offset).
REPLY_SECONDS_KEY = "reply-seconds"


def reply_seconds(replies: Iterable[Message], sent: Iterable[Message]) -> dict[int, float]:
    """``{partition_id: seconds}`` from each instruction in ``sent`` to its successful
    reply (replies to instructions not in ``sent``, e.g. re-sent ones, are left out)."""
    created = {m.metadata.message_id: m.metadata.created_at for m in sent}
    out = {}
    for msg in replies:
        start = created.get(msg.metadata.reply_to_message_id)
        if start is not None and not msg.has_error():
            out[reply_order_key(msg)[0]] = max(0.0, msg.metadata.created_at - start)
    return out


class RoundReporter(StrategyWrapper):
    """Reports each round as it happens: ``on_metrics(round, phase, metrics)`` with the
    aggregated MetricRecord (phase ``"train"`` or ``"evaluate"``) plus reply/failure
    counts, and ``on_silo_metrics(round, phase, partition_id, metrics)`` per silo, with
    the silo's reply latency (:data:`REPLY_SECONDS_KEY`, a runtime metric) added to the
    silo's own figures when the round state recorded its instruction.

    The evaluate phase's metrics also summarise how evenly the model serves the silos:
    for each name in ``fairness_metrics`` (e.g. the task's main metric), min, p10,
    median, mean, std and Jain's index over the silos that reported it
    (:func:`strategies.fairness.silo_fairness_metrics`, keys ``silo-<metric>-<stat>``).
    They are computed from the same per-silo values ``on_silo_metrics`` receives and only
    added to the report: the aggregate the strategy returns is unchanged."""

    def __init__(
        self,
        inner: Strategy,
        on_metrics: RoundCallback,
        on_silo_metrics: SiloCallback | None = None,
        *,
        fairness_metrics: Sequence[str] = (),
        round_state: RoundState | None = None,
    ) -> None:
        super().__init__(inner, round_state=round_state)
        self.on_metrics = on_metrics
        self.on_silo_metrics = on_silo_metrics
        self.fairness_metrics = tuple(fairness_metrics)

    def _report(
        self,
        server_round: int,
        phase: str,
        replies: list[Message],
        metrics,
        extra: Mapping[str, float] | None = None,
    ) -> None:
        ok = sum(not r.has_error() for r in replies)
        values = dict(metrics.items()) if metrics is not None else {}
        values["replies"] = ok
        values["failures"] = len(replies) - ok
        values.update(extra or {})
        self.on_metrics(server_round, phase, values)

    def _report_silos(
        self, server_round: int, phase: str, silos: list[tuple[int, dict[str, float]]]
    ) -> None:
        if self.on_silo_metrics is None:
            return
        for pid, values in silos:
            self.on_silo_metrics(server_round, phase, pid, values)

    def _with_latency(
        self, server_round: int, phase: str, replies: list[Message]
    ) -> list[tuple[int, dict[str, float]]]:
        silos = silo_metrics(replies)
        latency = reply_seconds(replies, self.round.sent_in(server_round, phase))
        return [
            (pid, {**values, REPLY_SECONDS_KEY: latency[pid]} if pid in latency else values)
            for pid, values in silos
        ]

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        # Read before aggregating: some Flower strategies pop records out of the replies.
        silos = self._with_latency(server_round, "train", replies)
        self._report_silos(server_round, "train", silos)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        self._report(server_round, "train", replies, metrics)
        return arrays, metrics

    def aggregate_evaluate(self, server_round, replies):
        replies = list(replies)
        silos = self._with_latency(server_round, "evaluate", replies)
        self._report_silos(server_round, "evaluate", silos)
        metrics = self.inner.aggregate_evaluate(server_round, replies)
        fairness = silo_fairness_metrics((values for _, values in silos), self.fairness_metrics)
        self._report(server_round, "evaluate", replies, metrics, fairness)
        return metrics


RejectCallback = Callable[[int, Rejection], None]


class ValidatedUpdates(StrategyWrapper):
    """Drops malformed train replies before the wrapped strategy aggregates, and rejects
    or clips (``outliers``) an update whose norm exceeds ``max_norm_ratio`` × the cohort
    median (see :mod:`strategies.validation`); adds ``rejected-updates`` and
    ``clipped-updates`` to the round's metrics and calls ``on_reject(round, rejection)``
    or ``on_clip(round, clipped)`` for each."""

    def __init__(
        self,
        inner: Strategy,
        max_norm_ratio: float = 0.0,
        on_reject: RejectCallback | None = None,
        *,
        outliers: str = "reject",
        on_clip: RejectCallback | None = None,
        round_state: RoundState | None = None,
    ) -> None:
        super().__init__(inner, round_state=round_state)
        if outliers not in ("reject", "clip"):
            raise ValueError(f"outliers must be 'reject' or 'clip'; got {outliers!r}")
        self.max_norm_ratio = max_norm_ratio
        self.on_reject = on_reject
        self.outliers = outliers
        self.on_clip = on_clip

    def configure_train(self, server_round, arrays, config, grid):
        self.begin_round(server_round, "train", arrays)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        reference = self.round.arrays  # the global model the replies are updates of
        # Partition order, as SeededSampling hands them on: the rows validation decodes
        # into the round's matrix are then already in the order a robust rule reads them.
        replies = sorted(replies, key=reply_order_key)
        rejected: list[Rejection] = []
        clipped: list[Rejection] = []
        if reference is not None:
            replies, rejected = filter_replies(
                replies,
                reference,
                max_norm_ratio=self.max_norm_ratio,
                partition_of=lambda m: reply_order_key(m)[0],
                clip=clipped if self.outliers == "clip" else None,
            )
        for verb, events, callback in (
            ("clipped", clipped, self.on_clip),
            ("rejected", rejected, self.on_reject),
        ):
            for event in events:
                log(
                    WARNING,
                    "round %d: %s update of node %d (partition %d): %s",
                    server_round, verb, event.node_id, event.partition_id, event.reason,
                )  # fmt: skip
                if callback is not None:
                    callback(server_round, event)
        # DP-FedAvg under Poisson sampling releases (noise) and accounts even a round without
        # updates: skipping it would reveal that the secret cohort was empty.
        empty_ok = getattr(self.inner, "releases_empty_rounds", False)
        if not any(not r.has_error() for r in replies) and not empty_ok:
            log(WARNING, "round %d: no valid update left; global model unchanged", server_round)
            return None, MetricRecord(
                {"rejected-updates": len(rejected), "clipped-updates": len(clipped)}
            )
        try:
            arrays, metrics = self.inner.aggregate_train(server_round, replies)
        finally:  # rows no strategy took (e.g. FedAvg's) must not keep the replies alive
            shared_stack().forget()
        if arrays is not None and reference is not None:
            # Flower's FedAdam/FedYogi/FedAdagrad compute in float64 (NumPy 2 promotes
            # float32 arrays by their float64 bias-correction scalars); the global model
            # keeps its dtypes, or every float32 reply of the next round would be rejected.
            arrays = keep_dtypes(arrays, reference)
        metrics = MetricRecord(dict(metrics.items())) if metrics is not None else MetricRecord()
        metrics["rejected-updates"] = len(rejected)
        metrics["clipped-updates"] = len(clipped)
        return arrays, metrics

    def aggregate_evaluate(self, server_round, replies):
        replies, rejected = filter_evaluate_replies(
            list(replies), partition_of=lambda m: reply_order_key(m)[0]
        )
        for rejection in rejected:
            log(
                WARNING,
                "round %d: rejected evaluation of node %d (partition %d): %s",
                server_round, rejection.node_id, rejection.partition_id, rejection.reason,
            )  # fmt: skip
        return self.inner.aggregate_evaluate(server_round, replies)
