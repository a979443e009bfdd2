"""One cheap federated-vs-centralised probe: where do the points go?

Runs a task's federation in this process (:class:`fl_app.inprocess.InProcessGrid`: the
ServerApp body and ClientApp of ``flwr run`` minus the transport, same model bit for bit)
or its centralised baseline (:func:`benchmarks.centralized.train_centralised`), with any
run-config overrides, and prints the final test metrics. ``benchmarks.centralized`` runs
the real ``flwr run``; this is for trying settings in seconds (the probes behind the
"what was tried" section of docs/benchmarks.md).

Usage::

    python -m benchmarks.centralized_probe pneumonia num-server-rounds=15 training.local-epochs=1
    python -m benchmarks.centralized_probe pneumonia --central
    python -m benchmarks.centralized_probe ner strategy=fedavgm server.learning-rate=1.0
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.centralized import app_defaults, primary_metrics, train_centralised
from benchmarks.harness import torch_threads


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def probe(task: str, overrides: dict[str, Any], *, central: bool = False) -> dict[str, Any]:
    """Final server-side test metrics of one in-process federation (10 silos, client-side
    evaluation off, FedAvg unless ``overrides`` say otherwise) or of its centralised
    baseline (``central``; IID silos' rows, same total epochs), with the seconds taken."""
    from fl_app.client_app import app
    from fl_app.config import RunConfig
    from fl_app.federation import run_federation
    from fl_app.inprocess import InProcessGrid

    with torch_threads(1), tempfile.TemporaryDirectory(prefix="fedsilo-probe-") as tmp:
        flat = {"task": task, "strategy": "fedavg", "sampling.fraction-evaluate": 0.0,
                **overrides, "output.run-dir": tmp}  # fmt: skip
        cfg = RunConfig.from_flower({**app_defaults(), **flat})
        started = time.perf_counter()
        if central:
            metrics = dict(train_centralised(cfg.replace({"data.partitioner": "iid"})).metrics)
        else:
            result, _ = run_federation(InProcessGrid(app, cfg.to_flower(), 10), cfg)
            server = result.evaluate_metrics_serverapp
            metrics = {k: float(v) for k, v in server[max(server)].items()}
        seconds = time.perf_counter() - started
    keep = primary_metrics(metrics)
    return {
        "task": task,
        "side": "central" if central else "fl",
        "overrides": overrides,
        "metrics": {k: round(metrics[k], 4) for k in keep},
        "seconds": round(seconds, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.centralized_probe")
    parser.add_argument("task")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--central", action="store_true", help="the centralised baseline")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.overrides)
    result = probe(args.task, {k: _value(v) for k, v in overrides.items()}, central=args.central)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
