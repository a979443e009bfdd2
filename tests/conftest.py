"""Shared test setup: offline MLflow, and real Flower Messages built outside a run."""

import os

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from strategies.wrappers import META_KEY

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def flower_identity():
    """Message objects need a run/node/task identity outside a running app."""
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 1
    TaskIdentity.task_id = 1


def build_reply(
    pid: int,
    node: int,
    arrays: dict[str, np.ndarray],
    num_examples: float = 10,
    **metrics: float,
) -> Message:
    """A train reply as a ClientApp sends it: arrays, metrics, and the silo's meta record."""
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": num_examples, **metrics}),
            META_KEY: ConfigRecord({"partition-id": pid}),
        }
    )
    instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
    return Message(content, reply_to=instruction)


@pytest.fixture
def make_reply(flower_identity):
    """Factory for real train reply Messages (see :func:`build_reply`)."""
    return build_reply
