"""Server side of update compression: a strategy wrapper that decodes.

:class:`CompressedUpdates` sits outside update validation (and attack simulation) in
the app's wrapper chain. For every training round it

* decodes compressed replies back into ordinary ``arrays`` records
  (global model + decoded delta), so any FedAvg-family strategy — and validation,
  DP and the robust rules — aggregates them unchanged;
* keeps each silo's EF21 estimate for top-k updates (:class:`.records.EstimateStore`)
  and tells every silo, in its train config (``compression-estimate-step``), which
  step of its estimate the server holds, so both copies stay in step;
* drops, with a warning, any reply it cannot decode (``undecodable-updates``).

What the messages weigh (``bytes-uploaded``, ``bytes-uploaded-dense``,
``bytes-downloaded``) and how long a round waits is measured by
:class:`strategies.traffic.TrafficMeter`, around this wrapper and inside it.
"""

from __future__ import annotations

from logging import WARNING

from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from strategies.compression.records import (
    ESTIMATE_STEP_KEY,
    EstimateStore,
    decompress_content,
    is_compressed,
)
from strategies.round_state import RoundState
from strategies.wrappers import StrategyWrapper, reply_order_key


class CompressedUpdates(StrategyWrapper):
    """Decodes compressed train replies before ``inner`` sees them."""

    def __init__(
        self,
        inner: Strategy,
        arrays_key: str = "arrays",
        *,
        round_state: RoundState | None = None,
    ) -> None:
        super().__init__(inner, round_state=round_state)
        self.arrays_key = arrays_key
        self.estimates = EstimateStore()

    def own_state(self):
        """The EF21 estimates (a run without top-k keeps none)."""
        return {"estimates": self.estimates.state_dict()}

    def load_own_state(self, state):
        if "estimates" in state:  # absent from checkpoints written before it was kept
            self.estimates.load_state_dict(state["estimates"])

    def configure_train(self, server_round, arrays, config, grid):
        self.begin_round(server_round, "train", arrays)
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        if self.estimates:  # EF21 in use: each silo learns the step the server holds
            for msg in messages:
                _with_config(msg, ESTIMATE_STEP_KEY, self.estimates.step(msg.metadata.dst_node_id))
        return messages

    def aggregate_train(self, server_round, replies):
        kept, undecodable = [], 0
        current = self.round.arrays  # the global model the updates are deltas of
        for msg in replies:
            if not msg.has_error() and current is not None and is_compressed(msg.content):
                try:
                    msg.content = decompress_content(
                        msg.content,
                        current,
                        self.arrays_key,
                        self.estimates,
                        msg.metadata.src_node_id,
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    undecodable += 1
                    log(
                        WARNING,
                        "round %d: dropped undecodable compressed update of node %d "
                        "(partition %d): %s",
                        server_round, msg.metadata.src_node_id, reply_order_key(msg)[0], exc,
                    )  # fmt: skip
                    continue
            kept.append(msg)
        arrays, metrics = self.inner.aggregate_train(server_round, kept)
        values = dict(metrics.items()) if metrics is not None else {}
        values["undecodable-updates"] = undecodable
        return arrays, MetricRecord(values)


def _with_config(msg, key: str, value: int, config_key: str = "config") -> None:
    """Give ``msg`` its own copy of its config record with ``key = value`` (strategies
    build all of a round's messages on ONE shared RecordDict)."""
    content = RecordDict(dict(msg.content.items()))
    old = content.config_records.get(config_key)
    config = ConfigRecord(dict(old.items())) if old is not None else ConfigRecord()
    config[key] = value
    content[config_key] = config
    msg.content = content
