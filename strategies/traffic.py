"""What a round costs on the wire: the serialised bytes of its messages and the wait.

:func:`message_bytes` is what Flower puts on the wire for a message: since Flower 1.20
a Message travels as a tree of "inflatable" objects (Message → RecordDict → records →
Arrays → ArrayChunks), each pushed as its ``deflate()`` bytes and deduplicated by
object id; we sum exactly those bytes.

:class:`TrafficMeter` is the strategy wrapper that reports them, in every run
(compressed or not); it only measures and hands everything on unchanged. The app puts
one outside the decoding of compressed updates (:class:`strategies.compression.
CompressedUpdates`): ``bytes-uploaded`` (replies as received), ``bytes-downloaded``
(instructions as sent) and ``train-seconds`` / ``evaluate-seconds`` (wall time from
handing the round's instructions to Flower until the replies are back: transport,
queueing, polling and the silos' own work); and one inside it: ``bytes-uploaded-dense``,
what the same replies weigh decoded.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from strategies.round_state import RoundState
from strategies.wrappers import StrategyWrapper


def message_bytes(obj: Message | RecordDict) -> int:
    """Bytes Flower serialises for ``obj``: the sum of ``deflate()`` over its unique
    inflatable objects (what a SuperNode pushes to the SuperLink)."""
    return sum(len(o.deflate()) for o in get_all_nested_objects(obj).values())


def messages_bytes(messages: Iterable[Message]) -> int:
    """``sum(message_bytes(m) for m in messages)``, each distinct object deflated once: a
    round's train instructions share one global model (10 silos: 10 deflates → 1)."""
    sizes: dict[int, int] = {}
    total = 0
    for msg in messages:
        for obj in get_all_nested_objects(msg).values():
            size = sizes.get(id(obj))
            if size is None:  # the messages hold every object, so ids stay unique here
                size = sizes[id(obj)] = len(obj.deflate())
            total += size
    return total


class TrafficMeter(StrategyWrapper):
    """Adds to each training round's metrics the serialised bytes of the successful
    train replies passing here (``uploaded_key``) and, unless ``downloaded_key`` is
    ``None``, of the train instructions (``downloaded_key``); with ``timed``, the
    seconds each phase waited for its replies (``train-seconds``, ``evaluate-seconds``).
    Messages pass unchanged. Meters sharing one ``sizes`` dict measure a reply whose
    content no layer between them replaced only once."""

    def __init__(
        self,
        inner: Strategy,
        *,
        uploaded_key: str = "bytes-uploaded",
        downloaded_key: str | None = "bytes-downloaded",
        timed: bool = True,
        sizes: dict[int, tuple[Message, RecordDict, int]] | None = None,
        round_state: RoundState | None = None,
    ) -> None:
        super().__init__(inner, round_state=round_state)
        self.sizes = sizes if sizes is not None else {}
        self.uploaded_key = uploaded_key
        self.downloaded_key = downloaded_key
        self.timed = timed
        self._downloaded = 0
        self._sent_at: float | None = None

    def _waited(self) -> float:
        return time.perf_counter() - self._sent_at if self._sent_at is not None else 0.0

    def _size(self, msg: Message) -> int:
        seen = self.sizes.get(id(msg))
        if seen is not None and seen[0] is msg and seen[1] is msg.content:
            return seen[2]
        size = message_bytes(msg)
        self.sizes[id(msg)] = (msg, msg.content, size)
        return size

    def configure_train(self, server_round, arrays, config, grid):
        self.sizes.clear()  # the replies of the previous round
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        if self.downloaded_key is not None:
            self._downloaded = messages_bytes(messages)
        self._sent_at = time.perf_counter()
        return messages

    def aggregate_train(self, server_round, replies):
        waited = self._waited()
        replies = list(replies)
        uploaded = sum(self._size(m) for m in replies if not m.has_error())
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        values = dict(metrics.items()) if metrics is not None else {}
        values[self.uploaded_key] = uploaded
        if self.downloaded_key is not None:
            values[self.downloaded_key] = self._downloaded
        if self.timed:
            values["train-seconds"] = waited
        return arrays, MetricRecord(values)

    def configure_evaluate(self, server_round, arrays, config, grid):
        messages = list(self.inner.configure_evaluate(server_round, arrays, config, grid))
        self._sent_at = time.perf_counter()
        return messages

    def aggregate_evaluate(self, server_round, replies):
        waited = self._waited()
        metrics = self.inner.aggregate_evaluate(server_round, replies)
        if metrics is None or not self.timed:
            return metrics
        values = dict(metrics.items())
        values["evaluate-seconds"] = waited
        return MetricRecord(values)
