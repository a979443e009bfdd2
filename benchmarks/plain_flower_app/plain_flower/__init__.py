"""Plain Flower baseline app (Flower's FedAvg, a plain ClientApp) for the overhead
benchmark; the model, data and local training come from fedsilo's ``tasks``."""

from fl_app.config import RunConfig
from tasks import get_task

TASK = get_task("digits")


def task_config(run_config) -> RunConfig:
    """The task settings of fedsilo's digits run (its defaults: data split, batch size,
    learning rate, momentum), with this app's seed and local epochs."""
    return RunConfig(
        seed=int(run_config["seed"]),
        num_server_rounds=int(run_config["num-server-rounds"]),
        training={"local-epochs": int(run_config["training.local-epochs"])},
    )
