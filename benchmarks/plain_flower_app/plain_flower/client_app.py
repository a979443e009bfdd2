"""A plain Flower ClientApp (the shape of Flower's PyTorch template): build the model,
load the received weights, train or evaluate on this node's partition, reply."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_core.seeding import derive_seed, seed_everything
from plain_flower import TASK, task_config

app = ClientApp()


def _model_and_data(msg: Message, context: Context):
    torch.set_num_threads(1)  # as fedsilo's ClientApp: the same work on the same cores
    cfg = task_config(context.run_config)
    pid = int(context.node_config["partition-id"])
    num = int(context.node_config["num-partitions"])
    model = TASK.build_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return cfg, pid, model, TASK.load_partition(pid, num, cfg.data, cfg.seed)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training from the received global model."""
    cfg, pid, model, data = _model_and_data(msg, context)
    server_round = int(msg.content["config"]["server-round"])
    generator = seed_everything(derive_seed(cfg.seed, "train", pid, server_round))
    metrics = TASK.train(model, data.train, cfg.training, generator=generator)
    metrics["num-examples"] = len(data.train)
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Metrics of the received global model on this node's validation split."""
    _, _, model, data = _model_and_data(msg, context)
    metrics = TASK.evaluate(model, data.val)
    metrics["num-examples"] = len(data.val)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
