"""Contribution scores in a run: the server-side utility, the per-round reports and the
end-of-run outputs (``contributions.csv``, ``contributions.png``, a ``contribution`` row in
metrics.json, the audit log). The scoring itself is :mod:`strategies.contribution`."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping
from pathlib import Path

from flwr.app import ArrayRecord

from fl_app import LOG
from fl_app.audit import AuditLog
from fl_app.sinks import MetricsSink
from strategies.contribution.scores import rank
from strategies.contribution.wrapper import SCORE_KEYS, ScoresCallback
from tasks import Task

CSV_NAME = "contributions.csv"
PNG_NAME = "contributions.png"


def utility_fn(task: Task, cfg) -> Callable[[ArrayRecord], float]:
    """The utility of a candidate global model: its ``contribution.metric`` on the server's
    held-out test set (accuracy, or the negated loss, so higher is better)."""
    test = task.load_test(cfg.data, cfg.seed)
    model = task.build_model()
    metric = cfg.contribution.metric
    sign = -1.0 if metric == "loss" else 1.0

    def utility(arrays: ArrayRecord) -> float:
        model.load_state_dict(arrays.to_torch_state_dict())
        value = float(task.evaluate(model, test)[metric])
        return sign * value if math.isfinite(value) else -math.inf

    return utility


def scores_reporter(sinks: MetricsSink, audit: AuditLog | None) -> ScoresCallback:
    """Reports a round's scores: per silo (phase ``contribution``: ``loo``, ``shapley``),
    one log line, and an audit entry."""

    def report(server_round: int, scores: dict[int, dict[str, float]], evaluations: int) -> None:
        for pid in sorted(scores):
            sinks.log_silo_metrics(server_round, "contribution", pid, scores[pid])
        LOG.info(
            "[fedsilo] round %d contribution (%d evaluations): %s",
            server_round,
            evaluations,
            " ".join(
                f"{pid}:" + ",".join(f"{k}={v:+.4f}" for k, v in scores[pid].items())
                for pid in sorted(scores)
            ),
        )
        if audit is not None:
            audit.record(
                "contribution",
                round=server_round,
                evaluations=evaluations,
                scores={str(pid): scores[pid] for pid in sorted(scores)},
            )

    return report


def contribution_table(totals: Mapping[int, Mapping[str, float]], method: str) -> list[dict]:
    """One row per silo: ``partition-id``, ``rounds``, the summed scores and ``rank``
    (1 = the largest Shapley total, or LOO total when only LOO is computed)."""
    keys = SCORE_KEYS[method]
    ranks = rank({pid: t.get(keys[-1], 0.0) for pid, t in totals.items()})
    return [
        {
            "partition-id": pid,
            "rounds": int(totals[pid]["rounds"]),
            **{key: totals[pid].get(key, 0.0) for key in keys},
            "rank": ranks[pid],
        }
        for pid in sorted(totals)
    ]


def write_contributions(
    run_dir: Path,
    totals: Mapping[int, Mapping[str, float]],
    method: str,
    server_round: int,
    sinks: MetricsSink,
    audit: AuditLog | None,
) -> list[dict]:
    """Writes ``contributions.csv`` and the bar chart ``contributions.png`` into
    ``run_dir``, logs them as artifacts, the totals as the metrics row (phase
    ``contribution``, ``<score>-<partition>`` and ``rounds-<partition>``) and in the
    audit log; returns the table."""
    rows = contribution_table(totals, method)
    keys = SCORE_KEYS[method]
    csv_path = run_dir / CSV_NAME
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["partition-id", "rounds", *keys, "rank"])
        writer.writeheader()
        writer.writerows(rows)
    png_path = run_dir / PNG_NAME
    _bar_chart(rows, keys, png_path)
    metrics: dict[str, float] = {}
    for row in rows:
        pid = row["partition-id"]
        metrics[f"rounds-{pid}"] = row["rounds"]
        metrics.update({f"{key}-{pid}": row[key] for key in keys})
    sinks.log_metrics(server_round, "contribution", metrics)
    if audit is not None:
        audit.record(
            "contributions",
            round=server_round,
            silos={str(row["partition-id"]): {k: v for k, v in row.items() if k != "partition-id"}
                   for row in rows},
        )  # fmt: skip
    for path in (csv_path, png_path):
        sinks.log_artifact(path)
    return rows


def _bar_chart(rows: list[dict], keys: tuple[str, ...], path: Path) -> None:
    from matplotlib.figure import Figure  # Agg canvas, no pyplot: no global backend change

    fig = Figure(figsize=(max(4.0, 0.6 * len(rows) * len(keys) + 2), 3.2))
    ax = fig.add_subplot()
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        xs = [i + (k - (len(keys) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [row[key] for row in rows], width=width, label=key)
    ax.set_xticks(range(len(rows)), [str(row["partition-id"]) for row in rows])
    ax.set_xlabel("partition")
    ax.set_ylabel("summed score over rounds")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_title("Contribution per silo")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
