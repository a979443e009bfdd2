"""The Flower side of selection: a wrapper that hands the policy's silos to the strategy
and tells the policy what happened to them."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.round_state import RoundState
from strategies.selection.base import Outcome, Selection, SelectionPolicy
from strategies.wrappers import (
    StrategyWrapper,
    load_strategy_state,
    reply_order_key,
    silo_metrics,
)

__all__ = ["SIM_SECONDS", "ParticipantSelection"]

#: Train metric a silo reports when the simulation gives it a speed: the seconds its round
#: takes at that speed (:mod:`fl_app.heterogeneity`). Measured ``silo-seconds`` otherwise.
SIM_SECONDS = "sim-seconds"

SelectCallback = Callable[[Selection], None]


class _Cohort:
    """A Grid view that lists only the chosen nodes."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        self._grid = grid
        self._nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str):
        return getattr(self._grid, name)


def _flower_strategy(strategy: Strategy) -> Strategy:
    while isinstance(strategy, StrategyWrapper):
        strategy = strategy.inner
    return strategy


@contextlib.contextmanager
def _take_all(strategy: Strategy, n: int) -> Iterator[None]:
    """Make Flower's sampling in ``strategy`` take all ``n`` nodes it is shown."""
    names = ("fraction_train", "min_train_nodes", "min_available_nodes")
    saved = {name: getattr(strategy, name) for name in names}
    strategy.fraction_train, strategy.min_train_nodes, strategy.min_available_nodes = 1.0, n, n
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(strategy, name, value)


class ParticipantSelection(StrategyWrapper):
    """Trains the silos ``policy`` picks (see :mod:`strategies.selection`).

    The cohort size is the one the strategy would sample (``sampling.fraction-train`` of the
    connected silos, at least ``sampling.min-train-nodes``). The uniform policy without the
    fairness guard leaves the draw to Flower (:class:`~strategies.wrappers.SeededSampling`)
    and only records it, so ``selection.policy = "random"`` is today's sampling, bit for bit.
    Otherwise Flower's sampling is shown only the chosen silos and takes them all.

    After the round, every chosen silo is an :class:`Outcome` for the policy: answered (a
    reply without error) with its ``train-loss``, ``num-examples`` and seconds, or failed
    (an error reply, or no reply before the round's timeout). ``round-sim-seconds`` (the
    slowest chosen silo's seconds) joins the round's train metrics.
    """

    def __init__(
        self,
        inner: Strategy,
        policy: SelectionPolicy,
        roster: Mapping[int, int] | None = None,
        *,
        on_select: SelectCallback | None = None,
        round_state: RoundState | None = None,
    ) -> None:
        """``roster`` (``{node_id: partition_id}``, the roll call's) when used alone; in a
        chain the roster of the shared ``round_state``."""
        super().__init__(inner)
        self.init_round_state(round_state, roster=roster)
        self.policy = policy
        self.on_select = on_select
        self._selection: Selection | None = None

    def configure_train(self, server_round, arrays, config, grid):
        policy = self.policy
        if policy.uniform and not policy.section.fairness_rounds:
            messages = list(self.inner.configure_train(server_round, arrays, config, grid))
            picked = sorted(self.round.partition_of(m.metadata.dst_node_id, -1) for m in messages)
            policy.record_selected(server_round, picked)
            selection = Selection(
                server_round,
                tuple(picked),
                {p: "uniform random" for p in picked},
                {p: 1.0 for p in picked},
            )
        else:
            roster = self.round.roster
            nodes = {roster[n]: n for n in grid.get_node_ids() if n in roster}
            flower = _flower_strategy(self.inner)
            if flower.fraction_train == 0.0:
                return []
            m = max(int(len(nodes) * flower.fraction_train), flower.min_train_nodes)
            selection = policy.select(server_round, sorted(nodes), m)
            chosen = [nodes[p] for p in selection.partitions]
            with _take_all(flower, len(chosen)):
                messages = list(
                    self.inner.configure_train(server_round, arrays, config, _Cohort(grid, chosen))
                )
        self._selection = selection
        if self.on_select is not None:
            self.on_select(selection)
        return messages

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        outcomes = self._outcomes(replies)
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if outcomes:
            self.policy.observe(server_round, outcomes)
            seconds = [o.seconds for o in outcomes if o.ok and o.seconds is not None]
            if seconds and metrics is not None:
                metrics["round-sim-seconds"] = max(seconds)
        return arrays, metrics

    def _outcomes(self, replies: list[Message]) -> list[Outcome]:
        if self._selection is None:
            return []
        # Read before aggregating: some Flower strategies pop records out of the replies.
        reported = dict(silo_metrics(replies))
        answered = {reply_order_key(r)[0] for r in replies if not r.has_error()}
        outcomes = []
        for p in self._selection.partitions:
            # A reply's own figures, as the silo claims them: a malformed value (NaN, ∞,
            # negative; validation rejects such an update) is not taken as history.
            values = {k: v for k, v in reported.get(p, {}).items() if math.isfinite(v) and v >= 0}
            examples = values.get("num-examples")
            outcomes.append(
                Outcome(
                    partition=p,
                    ok=p in answered,
                    seconds=values.get(SIM_SECONDS, values.get("silo-seconds")),
                    loss=values.get("train-loss"),
                    num_examples=int(examples) if examples is not None else None,
                )
            )
        self._selection = None
        return outcomes

    def own_state(self):
        return {"policy": self.policy.state_dict()}

    def load_own_state(self, state):
        self.policy.load_state_dict(state["policy"])

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`. A checkpoint written before selection existed has no
        layer of this class: the run then sampled uniformly, whose choice depends on no
        history, so the policy starts afresh and the state is the inner chain's."""
        if state.get("class") != type(self).__qualname__ and self.policy.uniform:
            load_strategy_state(self.inner, state)
            return
        super().load_state_dict(state)
