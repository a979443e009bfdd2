"""Flower Messages built outside a running app (benchmarks, tests, in-process grids).

Flower stamps every Message with the identity of the task that creates it; outside a
ServerApp/ClientApp process there is none, so :func:`offline_identity` sets one.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fl_core.records import META_KEY


def offline_identity(run_id: int = 1) -> None:
    """Give this process a run/node/task identity if it has none."""
    for attr in ("run_id", "node_id", "task_id"):
        if getattr(TaskIdentity, f"_{attr}") is None:
            setattr(TaskIdentity, attr, run_id)


def train_reply(
    partition_id: int,
    node_id: int,
    arrays: dict[str, np.ndarray],
    num_examples: float = 10,
    **metrics: float,
) -> Message:
    """A train reply as our ClientApp sends it: arrays, metrics and the silo's meta record,
    from ``node_id`` (as a reply to an instruction sent to that node)."""
    offline_identity()
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": num_examples, **metrics}),
            META_KEY: ConfigRecord({"partition-id": partition_id}),
        }
    )
    instruction = Message(RecordDict(), dst_node_id=node_id, message_type="train")
    return Message(content, reply_to=instruction)
