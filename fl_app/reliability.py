"""Dropouts, timeouts, retries and the per-round audit, around Flower's own round loop.

:class:`ReliableRounds` is the outermost strategy wrapper of a run. Flower's
``Strategy.start`` sends each round's messages and waits ``sampling.round-timeout`` seconds
(``grid.send_and_receive(..., timeout=...)``); silos that died or stalled are simply
missing from the replies (or, on the deployment runtime, answered by the SuperLink with a
"node unavailable" error once their heartbeat lapses). This wrapper then

* drops replies larger than ``robust.max-update-bytes`` before anything decodes them;
* counts the successful replies: with at least ``sampling.min-train-nodes`` the round goes on with
  them; with fewer, the round's instruction is re-sent to the missing silos that are still
  connected, up to ``sampling.round-retries`` times (their training is seeded by seed, partition
  and round, so a retried silo sends the update it would have sent — unless compression's
  error feedback already advanced its state on the lost attempt, local DP drew fresh noise
  from the silo's secret state, or secure aggregation already masked an update for the
  round's session, in which case the silo refuses to mask again); still short, it
  raises :class:`QuorumError` naming the missing silos (node id and partition id), and the
  run ends cleanly with its last complete round checkpointed;
* writes the round to the audit log (:mod:`fl_app.audit`).

:class:`RoundOffset` lets Flower's loop continue a resumed run at round k + 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

from fl_app.audit import AuditLog, update_sha256
from fl_app.polling import DelegatingGrid, poll_replies
from strategies.round_state import RoundState
from strategies.validation import (
    Rejection,
    check_payload_size,
    default_max_bytes,
    payload_bytes,
)
from strategies.wrappers import StrategyWrapper, reply_order_key

EPSILON_KEY = "epsilon"


class QuorumError(RuntimeError):
    """Fewer than ``sampling.min-train-nodes`` silos replied in a round, after all retries."""

    def __init__(self, server_round: int, replied: int, needed: int, missing: list[str]) -> None:
        self.server_round = server_round
        self.replied = replied
        self.needed = needed
        self.missing = missing
        super().__init__(
            f"round {server_round}: only {replied} of the silos replied within "
            f"sampling.round-timeout, sampling.min-train-nodes = {needed}; missing: "
            f"{', '.join(missing) or 'none'}. The run stopped; its last complete round is "
            "checkpointed. Bring the silos back and rerun with output.resume=true, or lower "
            "'sampling.min-train-nodes' / raise 'sampling.round-timeout' or "
            "'sampling.round-retries'."
        )


class RollCallError(RuntimeError):
    """No silo answered the roll call: every reply was an error (e.g. each silo refused
    the run config) or none came within ``sampling.round-timeout``. Carries the silos' own
    reasons, grouped: ``{reason: [node ids]}``."""

    def __init__(self, reasons: Mapping[str, list[int]], asked: int) -> None:
        self.reasons = dict(reasons)
        self.asked = asked
        if not reasons:
            message = (
                f"roll call: none of the {asked} SuperNodes answered within "
                "sampling.round-timeout; the run stopped before round 1."
            )
        else:
            lines = [
                f"nodes {', '.join(map(str, sorted(nodes)))}: {reason}"
                for reason, nodes in self.reasons.items()
            ]
            message = (
                f"roll call: every silo that answered ({sum(map(len, reasons.values()))} of "
                f"{asked}) refused; the run stopped before round 1. The silos' reasons:\n  "
                + "\n  ".join(lines)
            )
        super().__init__(message)


class Rejections:
    """The updates validation rejected in the current round: the ``on_reject`` callback
    of :class:`strategies.wrappers.ValidatedUpdates`, read (and cleared before each
    aggregation) by :class:`ReliableRounds` for the audit log. Created first and handed
    to both, so the wrapper chain can be built from the inside out."""

    def __init__(self) -> None:
        self._items: list[Rejection] = []
        self.clipped: list[Rejection] = []  # updates validation clipped instead (on_clip)

    def __call__(self, server_round: int, rejection: Rejection) -> None:
        self._items.append(rejection)

    def clip(self, server_round: int, clipped: Rejection) -> None:
        self.clipped.append(clipped)

    def __iter__(self):
        return iter(list(self._items))

    def clear(self) -> None:
        self._items.clear()
        self.clipped.clear()


def _audited(event: Rejection) -> dict[str, Any]:
    """A rejected or clipped update as the audit log records it."""
    return {"node-id": event.node_id, "partition-id": event.partition_id, "reason": event.reason}


class ReliableRounds(StrategyWrapper):
    """Quorum, retries, payload limit and audit around a round (see module doc).

    Parameters
    ----------
    inner : Strategy
        The wrapped strategy (reporting, validation, sampling, …).
    min_train_nodes : int
        Successful train replies a round needs.
    retries : int
        Times a short round is re-sent to its missing, still connected silos.
    timeout : float
        Seconds each retry waits for replies.
    roster : Mapping[int, int]
        ``{node_id: partition_id}`` from the roll call, to name silos (alone; in the
        app's chain the roster of ``round_state``).
    audit : AuditLog, optional
        Where each round is recorded.
    max_update_bytes : int
        Payload limit per reply; 0 = the global model's size + 1 MiB.
    rejections : Rejections, optional
        The round's rejected updates, filled by validation inside ``inner`` (audited).
    round_state : RoundState, optional
        The chain's shared round state. Outermost, this layer is its one writer: it
        records each phase's round, global model and instructions sent, which the inner
        layers read.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        min_train_nodes: int,
        retries: int = 0,
        timeout: float = 3600.0,
        roster: Mapping[int, int] | None = None,
        audit: AuditLog | None = None,
        max_update_bytes: int = 0,
        rejections: Rejections | None = None,
        round_state: RoundState | None = None,
    ) -> None:
        super().__init__(inner)
        self.init_round_state(round_state, roster=roster, records=True)
        self.min_train_nodes = min_train_nodes
        self.retries = retries
        self.timeout = timeout
        self.audit = audit
        self.max_update_bytes = max_update_bytes
        self._limit = max_update_bytes
        self._grid: Grid | None = None
        self.rejections = rejections if rejections is not None else Rejections()

    # -- helpers ------------------------------------------------------------------------
    def silo(self, node_id: int) -> str:
        """``"node <id> (partition <p>)"``."""
        pid = self.round.partition_of(node_id)
        return f"node {node_id} (partition {pid if pid is not None else '?'})"

    def _run_phase(self, phase: str, server_round: int, arrays, config, grid) -> list[Message]:
        """Record the phase in the round state, then hand it inwards; record what was sent."""
        self._grid = grid
        self.round.begin(server_round, phase, arrays)
        inner = self.inner
        configure = inner.configure_train if phase == "train" else inner.configure_evaluate
        return self.round.sent(configure(server_round, arrays, config, grid))

    def _drop_oversized(self, server_round: int, phase: str, replies: list[Message]):
        kept, dropped = [], []
        for msg in replies:
            reason = check_payload_size(msg, self._limit)
            if reason is None:
                kept.append(msg)
                continue
            node = msg.metadata.src_node_id
            log(WARNING, "round %d: rejected %s reply of %s: %s",
                server_round, phase, self.silo(node), reason)  # fmt: skip
            dropped.append(
                {"node-id": node, "partition-id": self.round.partition_of(node), "reason": reason}
            )
        return kept, dropped

    @staticmethod
    def _ok_nodes(replies: Iterable[Message]) -> set[int]:
        return {m.metadata.src_node_id for m in replies if not m.has_error()}

    def _retry(self, server_round: int, sent: list[Message], replies: list[Message]):
        """Re-send to missing silos while the round is short; return replies, retries and
        the node ids each retry went to."""
        attempts = 0
        retried: list[int] = []
        while attempts < self.retries and self._grid is not None:
            ok = self._ok_nodes(replies)
            if len(ok) >= self.min_train_nodes:
                break
            connected = set(self._grid.get_node_ids())
            again = [
                m for m in sent
                if m.metadata.dst_node_id not in ok and m.metadata.dst_node_id in connected
            ]  # fmt: skip
            if not again:
                break
            attempts += 1
            targets = {m.metadata.dst_node_id for m in again}
            retried += sorted(targets)
            log(
                WARNING,
                "round %d: %d/%d replies < sampling.min-train-nodes = %d; retry %d/%d to %s",
                server_round, len(ok), len(sent), self.min_train_nodes, attempts,
                self.retries, ", ".join(self.silo(n) for n in sorted(targets)),
            )  # fmt: skip
            fresh = [
                Message(m.content, dst_node_id=m.metadata.dst_node_id,
                        message_type=m.metadata.message_type)
                for m in again
            ]  # fmt: skip
            new = list(self._grid.send_and_receive(fresh, timeout=self.timeout))
            new, _ = self._drop_oversized(server_round, "train", new)
            # Keep earlier successes; earlier errors of retried silos are superseded.
            replies = [
                m for m in replies
                if not m.has_error() or m.metadata.src_node_id not in targets
            ] + new  # fmt: skip
        return replies, attempts, retried

    def _errors(self, replies: list[Message], sent: list[Message]) -> list[dict[str, Any]]:
        by_message = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
        out = []
        for msg in replies:
            if not msg.has_error():
                continue
            node = by_message.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
            out.append(
                {"node-id": node, "partition-id": self.round.partition_of(node),
                 "code": int(msg.error.code), "reason": str(msg.error.reason)}
            )  # fmt: skip
        return out

    def _participants(self, sent: list[Message], replies: list[Message]) -> dict[str, Any]:
        asked = [m.metadata.dst_node_id for m in sent]
        ok = self._ok_nodes(replies)
        return {
            "sampled": [{"node-id": n, "partition-id": self.round.partition_of(n)} for n in asked],
            "replied": sorted(ok),
            "missing": [
                {"node-id": n, "partition-id": self.round.partition_of(n)}
                for n in asked
                if n not in ok
            ],
        }

    # -- Strategy API ------------------------------------------------------------------
    def configure_train(self, server_round, arrays, config, grid):
        self._limit = self.max_update_bytes or default_max_bytes(arrays)
        return self._run_phase("train", server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        sent = self.round.sent_in(server_round, "train")
        replies, oversized = self._drop_oversized(server_round, "train", list(replies))
        replies, retries, retried = self._retry(server_round, sent, replies)
        # Hash what was received, before any wrapper decodes or rewrites it.
        updates = []
        for msg in sorted((m for m in replies if not m.has_error()), key=reply_order_key):
            records = list(msg.content.array_records.values())
            node = msg.metadata.src_node_id
            updates.append({
                "node-id": node,
                "partition-id": self.round.partition_of(node, reply_order_key(msg)[0]),
                "sha256": update_sha256(records[0]) if len(records) == 1 else None,
                "bytes": payload_bytes(msg),
            })  # fmt: skip
        entry = {
            "round": server_round,
            **self._participants(sent, replies),
            "updates": updates,
            "errors": self._errors(replies, sent),
            "oversized": oversized,
            "retries": retries,
            # One entry per re-send of a silo (a silo retried twice is listed twice).
            "retried": [
                {"node-id": n, "partition-id": self.round.partition_of(n)} for n in retried
            ],
        }
        ok = len(self._ok_nodes(replies))
        if sent and ok < self.min_train_nodes:
            missing = [self.silo(s["node-id"]) for s in entry["missing"]]
            if self.audit is not None:
                self.audit.record("train", **entry, outcome="quorum-not-reached")
            raise QuorumError(server_round, ok, self.min_train_nodes, missing)
        self.rejections.clear()
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if self.audit is not None:
            self.audit.record(
                "train",
                **entry,
                rejected=[_audited(r) for r in self.rejections],
                clipped=[_audited(r) for r in self.rejections.clipped],
                outcome="aggregated" if arrays is not None else "model-unchanged",
                epsilon=(
                    float(metrics[EPSILON_KEY])
                    if metrics is not None and EPSILON_KEY in metrics
                    else None
                ),
            )
        return arrays, metrics

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self._run_phase("evaluate", server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        sent = self.round.sent_in(server_round, "evaluate")
        replies, oversized = self._drop_oversized(server_round, "evaluate", list(replies))
        metrics = self.inner.aggregate_evaluate(server_round, replies)
        if self.audit is not None and sent:
            self.audit.record(
                "evaluate",
                round=server_round,
                **self._participants(sent, replies),
                errors=self._errors(replies, sent),
                oversized=oversized,
            )
        return metrics


class RoundOffset(StrategyWrapper):
    """Shifts Flower's round numbers by ``offset``: ``start(num_rounds=N - k)`` then runs
    rounds k + 1 … N of a resumed run, with every wrapper and every silo seeing the true
    round number."""

    def __init__(self, inner: Strategy, offset: int) -> None:
        super().__init__(inner)
        self.offset = offset

    def configure_train(self, server_round, arrays, config, grid):
        return self.inner.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        return self.inner.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round + self.offset, replies)


EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


def start_rounds(
    strategy: Strategy,
    grid: Grid,
    initial_arrays: ArrayRecord,
    *,
    first_round: int,
    num_rounds: int,
    timeout: float,
    train_config: ConfigRecord,
    evaluate_fn: EvaluateFn | None,
    evaluate_config: ConfigRecord | None = None,
) -> Result:
    """Flower's ``strategy.start`` for rounds ``first_round`` … ``num_rounds`` (a fresh run
    has ``first_round = 1``; a run resumed after round k has ``k + 1``). The Result's
    histories are keyed by the true round numbers."""
    offset = first_round - 1
    wrapped_fn = evaluate_fn
    if evaluate_fn is not None and offset > 0:

        def wrapped_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            # Round 0 of the resumed loop is the checkpointed round: already evaluated.
            return None if server_round == 0 else evaluate_fn(server_round + offset, arrays)

    runner = RoundOffset(strategy, offset) if offset else strategy
    result = runner.start(
        grid=grid,
        initial_arrays=initial_arrays,
        num_rounds=num_rounds - offset,
        timeout=timeout,
        train_config=train_config,
        evaluate_config=evaluate_config,
        evaluate_fn=wrapped_fn,
    )
    if offset:
        for history in (
            result.train_metrics_clientapp,
            result.evaluate_metrics_clientapp,
            result.evaluate_metrics_serverapp,
        ):
            shifted = {r + offset: v for r, v in history.items()}
            history.clear()
            history.update(shifted)
    return result


class StragglerGrid(DelegatingGrid):
    """A Grid whose ``send_and_receive`` stops waiting for stragglers: once a phase has the
    replies it needs (``sampling.min-train-nodes`` successful train replies,
    ``sampling.min-evaluate-nodes`` evaluate replies), it waits at most ``grace`` more
    seconds for the rest instead of the whole ``sampling.round-timeout``. A dead silo then
    costs a round ``grace`` seconds, not the timeout. Other messages (the roll call) wait
    for all replies or the timeout, as in Flower. Which silos make it becomes
    timing-dependent, so a run whose stragglers were cut is not bit-reproducible (the audit
    log lists who was left out)."""

    def __init__(
        self,
        grid: Grid,
        *,
        grace: float,
        needed: Mapping[str, int],
        first_interval: float = 0.02,
        max_interval: float = 0.5,
    ) -> None:
        self.grid = grid
        self.grace = grace
        self.needed = dict(needed)
        self.first_interval = first_interval
        self.max_interval = max_interval

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull until all replied, ``timeout`` passed, or the phase's quorum
        is in and ``grace`` more seconds passed."""
        import time

        messages = list(messages)
        kinds = {m.metadata.message_type for m in messages}
        needed = min((self.needed[k] for k in kinds if k in self.needed), default=None)
        start = time.monotonic()

        def cut_after(replies: list[Message]) -> float | None:
            ok = sum(not m.has_error() for m in replies)
            return self.grace if needed is not None and ok >= max(needed, 1) else None

        replies, pending = poll_replies(
            self.grid, messages, timeout=timeout, first_interval=self.first_interval,
            max_interval=self.max_interval, cut_after=cut_after,
        )  # fmt: skip
        if pending and (timeout is None or time.monotonic() - start < timeout):
            log(WARNING, "%d replies in after %.1fs; not waiting for %d straggler(s)",
                sum(not m.has_error() for m in replies), time.monotonic() - start,
                len(pending))  # fmt: skip
        return replies
