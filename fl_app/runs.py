"""Run inspection from a run directory: what ``fedsilo runs list | show | compare`` print.

A run directory (:func:`fl_app.federation.make_run_dir`) holds ``config.json`` (the
resolved settings, ``config-hash``, ``fedsilo-version``), ``metrics.json`` (one row per
round and phase), ``audit.jsonl`` (``run-start`` … ``run-end``, or ``run-failed`` with the
exception) and ``run.log`` (the run's log lines). Everything here only reads those files.

Status of a run: ``finished`` (the audit log has ``run-end``), ``failed`` (``run-failed``:
the reason is the ServerApp's exception), ``aborted`` (``run-aborted``: the quorum was lost)
or ``incomplete`` (none of these: still running, or killed; ``output.resume = true``
continues it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_app import RUN_INFO_KEYS
from fl_app.audit import read_audit_log
from fl_app.sinks import metric_value
from tasks import get_task

__all__ = [
    "LOG_FILE",
    "RunError",
    "RunSummary",
    "attach_run_log",
    "compare_runs",
    "detach_run_log",
    "find_runs",
    "last_log_lines",
    "main_metric",
    "plot_curves",
    "resolve_run",
    "round_table",
    "summarize",
]

#: The run's log lines (the ServerApp's ``flwr`` logger), written while it runs.
LOG_FILE = "run.log"


class RunError(ValueError):
    """A run reference that names no run, or a directory that is not a run."""


@dataclass(frozen=True)
class RunSummary:
    """One row of ``fedsilo runs list``."""

    name: str
    path: str
    task: str
    strategy: str
    rounds_planned: int
    rounds_done: int
    metric: str
    value: float | None
    epsilon: float | None
    status: str
    reason: str = ""


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: unreadable ({exc})") from exc


def main_metric(task: str) -> str:
    """The task's main metric (NER: entity-f1), ``accuracy`` for a task this install lacks."""
    try:
        return get_task(task).main_metric
    except KeyError:
        return "accuracy"


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return _json(run_dir / "metrics.json") or []


def find_runs(root: Path) -> list[Path]:
    """Run directories directly under ``root`` (those with a ``config.json``), newest first
    (their names start with the start time)."""
    if not root.is_dir():
        raise RunError(f"no run directory root at {root}; pass --run-dir (output.run-dir)")
    return sorted((p for p in root.iterdir() if (p / "config.json").is_file()), reverse=True)


def resolve_run(ref: str, root: Path) -> Path:
    """The run ``ref`` names: a path to a run directory, or a run's directory name (or a
    part of it that matches exactly one run) under ``root``."""
    path = Path(ref).expanduser()
    if (path / "config.json").is_file():
        return path
    if path.exists():
        raise RunError(f"{path} is not a run directory (no config.json)")
    matches = [p for p in find_runs(root) if ref in p.name]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunError(f"no run matches '{ref}' under {root}; `fedsilo runs list` shows them")
    names = ", ".join(p.name for p in matches[:5])
    raise RunError(f"'{ref}' matches {len(matches)} runs under {root} ({names} …); be precise")


def summarize(run_dir: Path) -> RunSummary:
    """The :class:`RunSummary` of one run directory."""
    params = _json(run_dir / "config.json")
    if not isinstance(params, dict):
        raise RunError(f"{run_dir} is not a run directory (no readable config.json)")
    task = str(params.get("task", "?"))
    metric = main_metric(task)
    rows = _rows(run_dir)
    server = [r for r in rows if r.get("phase") == "server" and r.get("round", 0) > 0]
    epsilons = [
        e for r in rows
        if r.get("phase") == "train" and (e := metric_value(r.get("epsilon"))) is not None
    ]  # fmt: skip
    events = read_audit_log(run_dir / "audit.jsonl") if (run_dir / "audit.jsonl").is_file() else []
    failed = [e for e in events if e.get("event") in ("run-failed", "run-aborted")]
    if failed:  # a crash, or the quorum lost beyond sampling.round-retries
        status = "failed" if failed[-1]["event"] == "run-failed" else "aborted"
        reason = str(failed[-1].get("reason", ""))
    elif any(e.get("event") == "run-end" for e in events):
        status, reason = "finished", ""
    else:
        status, reason = "incomplete", ""
    return RunSummary(
        name=run_dir.name,
        path=str(run_dir),
        task=task,
        strategy=str(params.get("strategy", "?")),
        rounds_planned=int(params.get("num-server-rounds", 0)),
        rounds_done=max((int(r["round"]) for r in server), default=0),
        metric=metric,
        value=metric_value(server[-1].get(metric)) if server else None,
        epsilon=epsilons[-1] if epsilons else None,
        status=status,
        reason=reason,
    )


def round_table(run_dir: Path) -> list[dict[str, Any]]:
    """One row per round: the server's test ``<metric>`` and ``loss``, the silos' spread of
    the metric on their own validation splits (``silo-min``, ``silo-median``, from the
    fairness summary) and ``epsilon`` (central DP); ``None`` where the run has none."""
    metric = summarize(run_dir).metric
    by_round: dict[int, dict[str, Any]] = {}
    for r in _rows(run_dir):
        row = by_round.setdefault(int(r.get("round", 0)), {"round": int(r.get("round", 0))})
        phase = r.get("phase")
        if phase == "server":
            row[metric], row["loss"] = metric_value(r.get(metric)), metric_value(r.get("loss"))
        elif phase == "evaluate":
            row["silo-min"] = metric_value(r.get(f"silo-{metric}-min"))
            row["silo-median"] = metric_value(r.get(f"silo-{metric}-median"))
        elif phase == "train":
            row["epsilon"] = metric_value(r.get("epsilon"))
    keys = ("round", metric, "loss", "silo-min", "silo-median", "epsilon")
    return [{k: row.get(k) for k in keys} for _, row in sorted(by_round.items())]


def plot_curves(run_dir: Path, path: Path) -> Path:
    """A PNG of the run's curves: the server metric per round with the silos' min–median
    band, and ε per round when the run spends any."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot: no global backend change
    from matplotlib.ticker import MaxNLocator

    summary = summarize(run_dir)
    rows = round_table(run_dir)
    spent = [r for r in rows if r["epsilon"] is not None]
    fig = Figure(figsize=(10 if spent else 6, 3.8))
    axes = fig.subplots(1, 2) if spent else [fig.add_subplot()]
    ax = axes[0]
    served = [r for r in rows if r[summary.metric] is not None]
    ax.plot([r["round"] for r in served], [r[summary.metric] for r in served], marker="o",
            label=f"server test {summary.metric}")  # fmt: skip
    band = [r for r in rows if r["silo-min"] is not None and r["silo-median"] is not None]
    if band:
        ax.fill_between([r["round"] for r in band], [r["silo-min"] for r in band],
                        [r["silo-median"] for r in band], alpha=0.3,
                        label=f"silos' {summary.metric}: min to median")  # fmt: skip
    ax.set(xlabel="round", ylabel=summary.metric, title=f"{summary.task} · {summary.strategy}")
    for axis in axes:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if spent:
        axes[1].plot([r["round"] for r in spent], [r["epsilon"] for r in spent], marker="o",
                     color="tab:red")  # fmt: skip
        axes[1].set(xlabel="round", ylabel="ε spent", title="privacy budget")
        axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def attach_run_log(run_dir: Path) -> logging.Handler:
    """Start copying the ``flwr`` logger's INFO+ lines (Flower's and the app's) to the
    run's :data:`LOG_FILE` (appended to on resume); stop with :func:`detach_run_log`."""
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("flwr").addHandler(handler)
    return handler


def detach_run_log(handler: logging.Handler) -> None:
    """Stop the copy :func:`attach_run_log` started."""
    logging.getLogger("flwr").removeHandler(handler)
    handler.close()


def last_log_lines(run_dir: Path, count: int = 20) -> list[str]:
    """The last ``count`` lines of the run's log (``[]`` if it kept none)."""
    try:
        return (run_dir / LOG_FILE).read_text(errors="replace").splitlines()[-count:]
    except FileNotFoundError:
        return []


def compare_runs(
    a: Path, b: Path
) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, float | None, float | None]]]:
    """``(config differences, final metric deltas)`` of two runs: the settings whose values
    differ (``(key, a's, b's)``; run facts such as the config hash left out) and the last
    server row's metrics of each (``(metric, a's, b's)``)."""
    params = [_json(p / "config.json") or {} for p in (a, b)]
    keys = sorted((set(params[0]) | set(params[1])) - RUN_INFO_KEYS)
    diff = [(k, params[0].get(k), params[1].get(k)) for k in keys
            if params[0].get(k) != params[1].get(k)]  # fmt: skip
    finals = []
    for p in (a, b):
        server = [r for r in _rows(p) if r.get("phase") == "server"]
        finals.append(server[-1] if server else {})
    skip = {"round", "phase", "num-examples", "round-seconds", "dp-private"}
    names: Sequence[str] = [k for k in dict.fromkeys([*finals[0], *finals[1]]) if k not in skip]
    deltas = [(k, metric_value(finals[0].get(k)), metric_value(finals[1].get(k))) for k in names]
    return diff, deltas
