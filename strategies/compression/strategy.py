"""Server side of update compression: a strategy wrapper that measures and decodes.

:class:`CompressedUpdates` sits outside update validation (and attack simulation) in
the app's wrapper chain. For every training round it

* measures the real serialised bytes of the instructions it sends
  (``bytes-downloaded``) and of the replies it receives (``bytes-uploaded``), see
  :func:`strategies.compression.records.message_bytes`;
* decodes compressed replies back into ordinary ``arrays`` records
  (global model + decoded delta), so any FedAvg-family strategy — and validation,
  DP and the robust rules — aggregates them unchanged;
* keeps each silo's EF21 estimate for top-k updates (:class:`.records.EstimateStore`)
  and tells every silo, in its train config (``compression-estimate-step``), which
  step of its estimate the server holds, so both copies stay in step;
* reports ``bytes-uploaded-dense`` (the serialised size of the decoded replies, i.e.
  what the same replies weigh uncompressed) and drops, with a warning, any reply it
  cannot decode (``undecodable-updates``);
* reports ``train-seconds`` / ``evaluate-seconds``: wall time from handing the round's
  instructions to Flower until the replies are back (transport, queueing, polling and
  the silos' own work — what a simulation's per-round overhead is made of).
"""

from __future__ import annotations

import time
from logging import WARNING

from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from strategies.compression.records import (
    ESTIMATE_STEP_KEY,
    EstimateStore,
    decompress_content,
    is_compressed,
    message_bytes,
    messages_bytes,
)
from strategies.wrappers import StrategyWrapper, reply_order_key


class CompressedUpdates(StrategyWrapper):
    """Decodes compressed train replies before ``inner`` sees them; counts bytes."""

    def __init__(self, inner: Strategy, arrays_key: str = "arrays") -> None:
        super().__init__(inner)
        self.arrays_key = arrays_key
        self._global = None
        self._downloaded = 0
        self._sent_at: float | None = None
        self.estimates = EstimateStore()

    def own_state(self):
        """The EF21 estimates (a run without top-k keeps none)."""
        return {"estimates": self.estimates.state_dict()}

    def load_own_state(self, state):
        if "estimates" in state:  # absent from checkpoints written before it was kept
            self.estimates.load_state_dict(state["estimates"])

    def configure_train(self, server_round, arrays, config, grid):
        self._global = arrays
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        if self.estimates:  # EF21 in use: each silo learns the step the server holds
            for msg in messages:
                _with_config(msg, ESTIMATE_STEP_KEY, self.estimates.step(msg.metadata.dst_node_id))
        self._downloaded = messages_bytes(messages)
        self._sent_at = time.perf_counter()
        return messages

    def aggregate_train(self, server_round, replies):
        waited = time.perf_counter() - self._sent_at if self._sent_at is not None else 0.0
        replies = list(replies)
        uploaded = dense = 0
        kept, undecodable = [], 0
        for msg in replies:
            if msg.has_error():
                kept.append(msg)
                continue
            size = message_bytes(msg)
            uploaded += size
            if self._global is not None and is_compressed(msg.content):
                try:
                    msg.content = decompress_content(
                        msg.content,
                        self._global,
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
                size = message_bytes(msg)
            dense += size
            kept.append(msg)
        arrays, metrics = self.inner.aggregate_train(server_round, kept)
        values = dict(metrics.items()) if metrics is not None else {}
        values["bytes-uploaded"] = uploaded
        values["bytes-uploaded-dense"] = dense
        values["bytes-downloaded"] = self._downloaded
        values["undecodable-updates"] = undecodable
        values["train-seconds"] = waited
        return arrays, MetricRecord(values)

    def configure_evaluate(self, server_round, arrays, config, grid):
        messages = list(self.inner.configure_evaluate(server_round, arrays, config, grid))
        self._sent_at = time.perf_counter()
        return messages

    def aggregate_evaluate(self, server_round, replies):
        waited = time.perf_counter() - self._sent_at if self._sent_at is not None else 0.0
        metrics = self.inner.aggregate_evaluate(server_round, replies)
        if metrics is None:
            return None
        values = dict(metrics.items())
        values["evaluate-seconds"] = waited
        return MetricRecord(values)


def _with_config(msg, key: str, value: int, config_key: str = "config") -> None:
    """Give ``msg`` its own copy of its config record with ``key = value`` (strategies
    build all of a round's messages on ONE shared RecordDict)."""
    content = RecordDict(dict(msg.content.items()))
    old = content.config_records.get(config_key)
    config = ConfigRecord(dict(old.items())) if old is not None else ConfigRecord()
    config[key] = value
    content[config_key] = config
    msg.content = content
