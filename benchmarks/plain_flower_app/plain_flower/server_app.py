"""A plain Flower ServerApp: Flower's FedAvg run by ``Strategy.start`` with a centralised
evaluation on the server's test set after every round. The only additions are clocks
(``FedAvg`` subclassed to note when a phase's instructions leave and its replies are
back) and a ``metrics.json`` in fedsilo's row format, so the overhead benchmark reads
both apps the same way."""

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fl_core.seeding import derive_seed, seed_everything
from plain_flower import TASK, task_config

app = ServerApp()


class TimedFedAvg(FedAvg):
    """Flower's FedAvg; notes each phase's wait (instructions handed to the Grid →
    replies back), as fedsilo reports ``train-seconds`` / ``evaluate-seconds``."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rows: list[dict] = []
        self._sent_at = 0.0

    def configure_train(self, server_round, arrays, config, grid):
        messages = super().configure_train(server_round, arrays, config, grid)
        self._sent_at = time.perf_counter()
        return messages

    def aggregate_train(self, server_round, replies):
        waited = time.perf_counter() - self._sent_at
        self.rows.append({"round": server_round, "phase": "train", "train-seconds": waited})
        return super().aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        messages = super().configure_evaluate(server_round, arrays, config, grid)
        self._sent_at = time.perf_counter()
        return messages

    def aggregate_evaluate(self, server_round, replies):
        waited = time.perf_counter() - self._sent_at
        self.rows.append({"round": server_round, "phase": "evaluate", "evaluate-seconds": waited})
        return super().aggregate_evaluate(server_round, replies)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """FedAvg over every node, every round; server-side evaluation after each round."""
    cfg = task_config(context.run_config)
    nodes = int(context.run_config["sampling.min-available-nodes"])
    seed_everything(derive_seed(cfg.seed, "init"))
    model = TASK.build_model()
    initial = ArrayRecord(model.state_dict())
    test = TASK.load_test(cfg.data, cfg.seed)
    strategy = TimedFedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=nodes,
        min_evaluate_nodes=nodes,
        min_available_nodes=nodes,
    )
    round_ended = [time.perf_counter()]

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        metrics = TASK.evaluate(model, test)
        now = time.perf_counter()
        row = {"round": server_round, "phase": "server", **metrics}
        if server_round > 0:
            row["round-seconds"] = now - round_ended[0]
        round_ended[0] = now
        strategy.rows.append(row)
        return MetricRecord(metrics)

    strategy.start(
        grid,
        initial,
        num_rounds=cfg.num_server_rounds,
        train_config=ConfigRecord({"learning-rate": cfg.training.learning_rate}),
        evaluate_fn=evaluate,
    )
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    run_dir = Path(str(context.run_config["output.run-dir"]) or "outputs") / f"{stamp}-plain-flower"
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / "metrics.json").write_text(json.dumps(strategy.rows, indent=1))
