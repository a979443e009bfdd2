"""An in-process Flower ``Grid``: the ClientApp runs in this process, one ``Context`` per
virtual silo, no SuperLink, no Ray.

It runs the same ServerApp code (:func:`fl_app.federation.run_federation`) and the same
ClientApp (``fl_app.client_app.app``, dispatched by message type like a SuperNode does)
as ``flwr run``, minus the transport. Benchmarks use it to run many federations quickly;
a test checks it reproduces the real simulation's model bit for bit.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fl_app.messages import offline_identity

_ERROR_CLIENT_EXCEPTION = 1


class InProcessGrid(Grid):
    """Delivers each message to the ClientApp of its destination node, in this process."""

    def __init__(
        self,
        client_app: ClientApp,
        run_config: dict[str, Any],
        num_nodes: int,
        *,
        run_id: int = 1,
        first_node_id: int = 1001,
        node_configs: list[dict[str, Any]] | None = None,
    ) -> None:
        self.client_app = client_app
        offline_identity(run_id)
        self.contexts = {
            first_node_id + i: Context(
                run_id=run_id,
                node_id=first_node_id + i,
                node_config={
                    "partition-id": i,
                    "num-partitions": num_nodes,
                    **(node_configs[i] if node_configs else {}),
                },
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i in range(num_nodes)
        }
        self._ids = itertools.count()
        self._pending: dict[str, Message] = {}
        self._run = None

    # --- Grid API -------------------------------------------------------------------
    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            key = f"m{next(self._ids)}"
            # As Flower's grids do: the instruction gets its id, so replies name it.
            msg.metadata.__dict__["_message_id"] = key
            self._pending[key] = msg
            ids.append(key)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._deliver(self._pending.pop(key)) for key in message_ids]

    def send_and_receive(self, messages, *, timeout=None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    # ---------------------------------------------------------------------------------
    def _deliver(self, msg: Message) -> Message:
        context = self.contexts[msg.metadata.dst_node_id]
        try:
            return self.client_app(msg, context)
        except Exception as exc:  # a failing silo becomes an error reply, as in Flower
            return Message(
                Error(_ERROR_CLIENT_EXCEPTION, f"{type(exc).__name__}: {exc}"), reply_to=msg
            )
