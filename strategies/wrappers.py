"""Strategy wrappers the app puts around any registered strategy.

* :class:`SeededSampling` makes a run reproducible: each round's client sample is drawn
  from a generator seeded by (seed, round, phase) over nodes ordered by partition id, and
  replies are aggregated in partition order (float sums depend on order).
* :class:`RoundReporter` hands each round's aggregated metrics to a callback (the run's
  metrics sinks) as soon as the round produces them.

Both delegate everything else to the wrapped strategy, as Flower's DP wrappers do.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

META_KEY = "meta"  # ConfigRecord in replies carrying the silo's "partition-id"


class StrategyWrapper(Strategy):
    """Delegates every Strategy method to ``inner``."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

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
    if not msg.has_error() and META_KEY in msg.content.config_records:
        pid = int(msg.content.config_records[META_KEY].get("partition-id", pid))
    return (pid, msg.metadata.src_node_id)


class SeededSampling(StrategyWrapper):
    """Seeded client sampling and partition-ordered aggregation (see module doc)."""

    def __init__(self, inner: Strategy, seed: int, node_partitions: Mapping[int, int]) -> None:
        super().__init__(inner)
        self.seed = seed
        self.node_partitions = dict(node_partitions)

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
        ordered = _OrderedGrid(grid, self.node_partitions)
        return self._sampled(
            "train",
            server_round,
            lambda: self.inner.configure_train(server_round, arrays, config, ordered),
        )

    def configure_evaluate(self, server_round, arrays, config, grid):
        ordered = _OrderedGrid(grid, self.node_partitions)
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


class RoundReporter(StrategyWrapper):
    """Calls ``on_metrics(round, phase, metrics)`` with each aggregated MetricRecord
    (phase ``"train"`` or ``"evaluate"``) and counts the replies of each round."""

    def __init__(self, inner: Strategy, on_metrics: RoundCallback) -> None:
        super().__init__(inner)
        self.on_metrics = on_metrics

    def _report(self, server_round: int, phase: str, replies: list[Message], metrics) -> None:
        ok = sum(not r.has_error() for r in replies)
        values = dict(metrics.items()) if metrics is not None else {}
        values["replies"] = ok
        values["failures"] = len(replies) - ok
        self.on_metrics(server_round, phase, values)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        self._report(server_round, "train", replies, metrics)
        return arrays, metrics

    def aggregate_evaluate(self, server_round, replies):
        replies = list(replies)
        metrics = self.inner.aggregate_evaluate(server_round, replies)
        self._report(server_round, "evaluate", replies, metrics)
        return metrics
