"""Federated vs centralised: what does keeping the data in 10 silos cost?

For each task and partitioning (IID; Dirichlet label skew), run the real federation
(``flwr run`` in local simulation, 10 SuperNodes, FedAvg) and read the final
server-side metrics on the server's held-out test set. Against it, train the same model
centrally, in this process, on the union of exactly the rows the 10 silos train on
(their IID training splits), with the same batch size, learning rate, momentum, model
init and input scaling, for the same total number of epochs
(``num-server-rounds × training.local-epochs``: in FL every silo passes over its rows
``training.local-epochs`` times per round), and evaluate it on the same test set.

Usage::

    python -m benchmarks.centralized        # all tasks; writes docs/benchmarks.{md,json}
    python -m benchmarks.centralized --tasks breast-cancer --quick   # smoke, writes nothing
    python -m benchmarks.centralized --rounds 10 --out /tmp/bench.md

Same config → same metrics (everything is seeded; only the seconds vary).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import harness
from benchmarks.harness import Table, code_version, cpu_count, load_average
from fl_app.config import RunConfig
from fl_app.local_run import PROJECT_DIR, SimulationRun, run_simulation
from fl_core.config import flatten
from fl_core.records import LOCAL_TRAIN_SECONDS_KEY
from fl_core.seeding import derive_seed, seed_everything
from tasks import TASKS, get_task
from tasks.base import ArrayDataset

LOG = logging.getLogger(__name__)

DEFAULT_TASKS = ("digits", "breast-cancer", "fraud", "pneumonia", "ner")
DEFAULT_OUT = Path("docs/benchmarks.md")
NUM_SILOS = 10
DIRICHLET_ALPHA = 0.5
QUICK_ROUNDS = 2
#: Seeds every setting runs with (rows report mean ± std over them).
DEFAULT_SEEDS = (42, 43, 44)
#: Path parts left out of a project snapshot when git cannot list the app's files.
SNAPSHOT_SKIP = {
    ".git", "__pycache__", "outputs", "node_modules", ".venv", "mlruns", ".pytest_cache",
    ".ruff_cache", ".hypothesis",
}  # fmt: skip
#: ``flwr run`` output when its local SuperLink missed flwr's start-up deadline, and how
#: often a federated run is started before that counts as a failure.
SUPERLINK_START_FAILURE = "Failed to start local SuperLink"
#: Ray's message when its node cannot start on an overloaded machine (also retried).
RAY_START_FAILURE = "The current node timed out during startup"
START_ATTEMPTS = 3
#: Lines of ``flwr run`` output shown when a run fails.
TAIL_LINES = 80
#: Run-config keys that must be identical in the FL run and the centralised baseline.
MATCHED_KEYS = (
    "task", "data.source", "seed", "data.test-fraction", "data.val-fraction",
    "num-server-rounds", "training.local-epochs", "training.batch-size",
    "training.learning-rate", "training.momentum",
)  # fmt: skip


class BenchmarkError(RuntimeError):
    """A federated run failed or did not produce what the benchmark needs."""


@dataclass(frozen=True)
class BenchmarkResult:
    """Final test metrics of one setting (``central``, ``iid`` or ``dirichlet``) of a task."""

    task: str
    setting: str
    metrics: Mapping[str, float]
    seconds: float
    train_rows: int
    epochs: int
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: The run seed (``None``: not recorded, a report from before seeds were repeated).
    seed: int | None = None


# --------------------------------------------------------------------------- configs
def app_defaults(project_dir: Path = PROJECT_DIR) -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of the app's pyproject.toml (what ``flwr run`` starts from),
    flat with dotted keys as Flower hands it to the app."""
    with (project_dir / "pyproject.toml").open("rb") as fh:
        return flatten(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


#: Per-task hyper-parameters (each task's ``recommended`` run config, with its reason
#: where the task declares it), used by the federated runs and the centralised baseline
#: alike.
TASK_OVERRIDES: dict[str, dict[str, Any]] = {
    name: dict(TASKS[name].recommended) for name in TASKS if TASKS[name].recommended
}


def fl_overrides(
    task: str,
    partitioner: str,
    *,
    rounds: int | None = None,
    seed: int | None = None,
    dirichlet_alpha: float = DIRICHLET_ALPHA,
    client_eval: bool = False,
) -> dict[str, Any]:
    """``--run-config`` overrides of one federated benchmark run (FedAvg).

    Client-side evaluation (each silo scoring the global model on its validation rows)
    is off unless ``client_eval``: it never changes the global model, the benchmark reads
    the server-side test metrics only, and the centralised baseline has no such step.
    """
    overrides: dict[str, Any] = {
        "task": task,
        "strategy": "fedavg",
        "data.partitioner": partitioner,
        "data.dirichlet-alpha": float(dirichlet_alpha),
        **TASK_OVERRIDES.get(task, {}),
    }
    if not client_eval:
        overrides["sampling.fraction-evaluate"] = 0.0
    if rounds is not None:
        overrides["num-server-rounds"] = int(rounds)
    if seed is not None:
        overrides["seed"] = int(seed)
    return overrides


def resolve_config(overrides: Mapping[str, Any], project_dir: Path = PROJECT_DIR) -> RunConfig:
    """The validated config a ``flwr run`` with ``overrides`` resolves to (app defaults
    from pyproject.toml, then the overrides), exactly as the ServerApp sees it."""
    merged = {**app_defaults(project_dir), **overrides}
    return RunConfig.from_flower(merged)


# --------------------------------------------------------------------------- centralised
def pooled_silo_train(cfg: RunConfig, num_silos: int = NUM_SILOS) -> tuple[ArrayDataset, list]:
    """The union of the ``num_silos`` silos' training splits under ``cfg`` and each silo's
    feature moments (``None`` for tasks that do not standardise inputs)."""
    task = get_task(cfg.task)
    parts = [task.load_partition(i, num_silos, cfg.data, cfg.seed) for i in range(num_silos)]
    pooled = ArrayDataset(
        np.concatenate([p.train.x for p in parts]), np.concatenate([p.train.y for p in parts])
    )
    return pooled, [task.feature_moments(p.train) for p in parts]


def train_centralised(cfg: RunConfig, num_silos: int = NUM_SILOS) -> BenchmarkResult:
    """Train the task's model on the pooled silo training rows for
    ``num-server-rounds × training.local-epochs`` epochs and evaluate it on the server's test set.

    ``cfg`` should use the IID partitioner (its partitions are the silos' rows). Init is
    seeded like the ServerApp's (``derive_seed(seed, "init")``), input scaling comes from
    the silos' pooled moments, training uses one torch thread (as each silo does) and a
    generator seeded with ``derive_seed(seed, "train", "central")``.
    """
    started = time.perf_counter()
    task = get_task(cfg.task)
    pooled, moments = pooled_silo_train(cfg, num_silos)
    test = task.load_test(cfg.data, cfg.seed)
    epochs = cfg.num_server_rounds * cfg.training.local_epochs

    with harness.torch_threads(1):
        seed_everything(derive_seed(cfg.seed, "init"))
        model = task.build_model()
        task.set_input_scaling(model, [m for m in moments if m is not None])
        generator = seed_everything(derive_seed(cfg.seed, "train", "central"))
        training = cfg.replace({"training.local-epochs": epochs}).training
        train_started = time.perf_counter()
        train_metrics = task.train(model, pooled, training, generator=generator)
        train_seconds = time.perf_counter() - train_started
        metrics = task.evaluate(model, test)
    seconds = time.perf_counter() - started
    LOG.info(
        "central %s: %d rows × %d epochs in %.2fs, train-loss %.4f, test %s",
        cfg.task, len(pooled), epochs, seconds, train_metrics["train-loss"], _fmt(metrics),
    )  # fmt: skip
    return BenchmarkResult(
        cfg.task, "central", metrics, seconds, len(pooled), epochs,
        extra={
            "train-loss": train_metrics["train-loss"], "train-seconds": train_seconds,
            "load-1min": load_average(),
        },
        seed=cfg.seed,
    )  # fmt: skip


# --------------------------------------------------------------------------- federated
def _tail(output: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(output.rstrip().splitlines()[-lines:])


def check_run(run: SimulationRun, cfg: RunConfig) -> dict[str, Any]:
    """The final server metrics of ``run``; raise :class:`BenchmarkError` (with the tail of
    the output) if it failed, stopped early or ran with another config than ``cfg``."""
    final = run.final("server")
    problem = None
    if run.returncode != 0:
        problem = f"flwr run exited with code {run.returncode}"
    elif not final:
        problem = "flwr run wrote no server-side metrics"
    elif final["round"] != cfg.num_server_rounds:
        problem = f"last server metrics are of round {final['round']}, not {cfg.num_server_rounds}"
    elif run.run_dir is not None and (run.run_dir / "config.json").exists():
        used = json.loads((run.run_dir / "config.json").read_text())
        expected = cfg.to_flower()
        diff = {
            k: (used.get(k), expected[k])
            for k in (
                *MATCHED_KEYS,
                "data.partitioner",
                "data.dirichlet-alpha",
                "strategy",
                "sampling.fraction-evaluate",
            )
            if used.get(k) != expected[k]
        }
        if diff:
            problem = f"flwr run used another config (key: (used, expected)): {diff}"
    if problem:
        raise BenchmarkError(
            f"{cfg.task}/{cfg.data.partitioner}: {problem}. Last lines of its output:\n"
            f"{_tail(run.output)}"
        )
    return final


def project_files(project_dir: Path = PROJECT_DIR) -> list[Path]:
    """The app's files, relative to ``project_dir``: what git does not ignore (tracked or
    not), or, without git, everything but VCS, caches and outputs."""
    try:
        out = subprocess.run(
            ["git", "-C", str(project_dir), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"],
            capture_output=True, check=True, timeout=30,
        )  # fmt: skip
        names = [n for n in out.stdout.decode().split("\0") if n]
    except (OSError, subprocess.SubprocessError):
        names = [
            str(f.relative_to(project_dir))
            for f in project_dir.rglob("*")
            if f.is_file() and not set(f.relative_to(project_dir).parts) & SNAPSHOT_SKIP
        ]
    return sorted(Path(n) for n in names if (project_dir / n).is_file())


@contextlib.contextmanager
def project_snapshot(project_dir: Path = PROJECT_DIR) -> Iterator[Path]:
    """A frozen copy of the app (see :func:`project_files`) in a temporary directory.

    ``flwr run`` packages the app from disk at every run; running all of a benchmark's
    runs from one copy taken at the start keeps them on the same code and config even if
    the working tree is being edited meanwhile.
    """
    with tempfile.TemporaryDirectory(prefix="fedsilo-bench-") as tmp:
        dest = Path(tmp) / project_dir.name
        for rel in project_files(project_dir):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project_dir / rel, dest / rel)
        yield dest


def run_federated(
    overrides: Mapping[str, Any],
    cfg: RunConfig | None = None,
    *,
    num_silos: int = NUM_SILOS,
    project_dir: Path = PROJECT_DIR,
    **simulation_kwargs: Any,
) -> BenchmarkResult:
    """One real ``flwr run`` of the app in ``project_dir`` with ``overrides`` (``cfg``: the
    config they resolve to, see :func:`resolve_config`); its final server-side test
    metrics and wall-clock seconds (SuperLink start-up and shutdown included)."""
    cfg = cfg or resolve_config(overrides, project_dir)
    LOG.info(
        "federated %s/%s: flwr run with %d silos, %d rounds …",
        cfg.task,
        cfg.data.partitioner,
        num_silos,
        cfg.num_server_rounds,
    )
    with tempfile.TemporaryDirectory(prefix="fedsilo-bench-runs-") as runs_dir:
        simulation_kwargs.setdefault("run_dir", Path(runs_dir))
        for attempt in range(1, START_ATTEMPTS + 1):
            started = time.perf_counter()
            run = run_simulation(
                dict(overrides),
                num_supernodes=num_silos,
                project_dir=project_dir,
                **simulation_kwargs,
            )
            seconds = time.perf_counter() - started
            if run.final("server") or not any(
                marker in run.output for marker in (SUPERLINK_START_FAILURE, RAY_START_FAILURE)
            ):
                break
            # flwr gives its local SuperLink 15 s to start and Ray its node a fixed time; a
            # busy machine can miss either. Nothing ran, so a fresh start measures the same.
            LOG.warning(
                "the simulation runtime did not start in time (attempt %d); retrying", attempt
            )
        final = check_run(run, cfg)
        timing = run_timing(run)
    metrics = {
        k: (float("nan") if v is None else float(v))
        for k, v in final.items()
        if k not in ("round", "phase", "num-examples")
    }
    task = get_task(cfg.task)
    sizes = [
        len(task.load_partition(i, num_silos, cfg.data, cfg.seed).train) for i in range(num_silos)
    ]
    LOG.info(
        "federated %s/%s: %.1fs, test %s", cfg.task, cfg.data.partitioner, seconds, _fmt(metrics)
    )
    return BenchmarkResult(
        cfg.task,
        cfg.data.partitioner,
        metrics,
        seconds,
        sum(sizes),
        cfg.num_server_rounds * cfg.training.local_epochs,
        extra={
            "silo-train-rows": sizes, "num-server-rounds": cfg.num_server_rounds,
            "local-epochs": cfg.training.local_epochs, "strategy": cfg.strategy, **timing,
            "load-1min": load_average(),
        },
        seed=cfg.seed,
    )  # fmt: skip


def run_timing(run: SimulationRun) -> dict[str, float]:
    """Where a federated run's seconds went, from what the run logged:

    * ``rounds-seconds``: the rounds' wall time, summed (the server's ``round-seconds``:
      sending the instructions, the silos' training, collecting the replies, aggregating,
      evaluating on the test set, checkpointing);
    * ``silo-train-seconds``: the silos' local training only, summed over silos and
      rounds (each silo's ``local-train-seconds``, its epochs on one thread: the work the
      centralised loop does in one go). Read from the run's ``silo_metrics.json``;
      missing when that file is gone.
    """
    out: dict[str, float] = {}
    rounds = [
        float(r["round-seconds"])
        for r in run.metrics
        if r.get("phase") == "server" and r.get("round-seconds") is not None
    ]
    if rounds:
        out["rounds-seconds"] = sum(rounds)
    silo_file = run.run_dir / "silo_metrics.json" if run.run_dir is not None else None
    if silo_file is not None and silo_file.is_file():
        silos = [
            float(r[LOCAL_TRAIN_SECONDS_KEY])
            for r in json.loads(silo_file.read_text())
            if r.get("phase") == "train" and r.get(LOCAL_TRAIN_SECONDS_KEY) is not None
        ]
        if silos:
            out["silo-train-seconds"] = sum(silos)
    return out


# --------------------------------------------------------------------------- benchmark
@dataclass(frozen=True)
class TaskPlan:
    """A task's resolved configs: the centralised baseline's and each FL run's."""

    task: str
    central: RunConfig
    federated: tuple[tuple[dict[str, Any], RunConfig], ...]


def plan_task(
    task: str,
    *,
    rounds: int | None = None,
    seed: int | None = None,
    client_eval: bool = False,
    project_dir: Path = PROJECT_DIR,
) -> TaskPlan:
    """Resolve (and so validate) every config of a task's benchmark up front."""
    federated = []
    for partitioner in ("iid", "dirichlet"):
        overrides = fl_overrides(
            task, partitioner, rounds=rounds, seed=seed, client_eval=client_eval
        )
        federated.append((overrides, resolve_config(overrides, project_dir)))
    return TaskPlan(task, federated[0][1], tuple(federated))


def benchmark_task(plan: TaskPlan, *, project_dir: Path = PROJECT_DIR) -> list[BenchmarkResult]:
    """Centralised baseline, then FL under IID and Dirichlet(α = 0.5) partitions."""
    results = [train_centralised(plan.central)]
    for overrides, cfg in plan.federated:
        results.append(run_federated(overrides, cfg, project_dir=project_dir))
    return results


#: A binary model whose test ROC-AUC is below this ranks no better than (near) chance.
CHANCE_ROC_AUC = 0.6


def collapsed(result: BenchmarkResult) -> bool:
    """Whether a binary-task model ranks test rows at (near) chance, i.e. predicts
    (near-)constant scores: a training failure, not a measure of federation."""
    roc = result.metrics.get("roc-auc")
    return roc is not None and (math.isnan(roc) or roc < CHANCE_ROC_AUC)


def primary_metrics(metrics: Mapping[str, float]) -> tuple[str, ...]:
    """ROC-AUC and PR-AUC for binary tasks, entity-level F1 for NER, accuracy otherwise."""
    if "roc-auc" in metrics:
        return ("roc-auc", "pr-auc")
    return ("entity-f1",) if "entity-f1" in metrics else ("accuracy",)


def _reference(results: Sequence[BenchmarkResult]) -> dict[tuple[str, int | None], BenchmarkResult]:
    """The centralised result of each (task, seed)."""
    return {(r.task, r.seed): r for r in results if r.setting == "central"}


def gaps(results: Sequence[BenchmarkResult]) -> list[dict[str, float] | None]:
    """Per result, ``{metric: FL − central}`` in points (×100) for the primary metrics,
    against the centralised result of the same task and seed (``None`` for central rows
    and for results without a centralised result of their task and seed)."""
    central = _reference(results)
    out: list[dict[str, float] | None] = []
    for r in results:
        ref = central.get((r.task, r.seed))
        if r.setting == "central" or ref is None:
            out.append(None)
            continue
        out.append(
            {m: 100.0 * (r.metrics[m] - ref.metrics[m]) for m in primary_metrics(ref.metrics)}
        )
    return out


def time_ratios(
    results: Sequence[BenchmarkResult],
    measure: Callable[[BenchmarkResult], float | None] = lambda r: r.seconds,
) -> list[float | None]:
    """Per result, its ``measure`` (default: its wall seconds) ÷ the centralised result's
    of the same task and seed (``None`` for central rows, or where either is unknown or the
    centralised one is 0)."""
    central = {k: measure(r) for k, r in _reference(results).items()}
    out: list[float | None] = []
    for r in results:
        mine, theirs = measure(r), central.get((r.task, r.seed))
        ok = r.setting != "central" and mine is not None and theirs
        out.append(mine / theirs if ok else None)
    return out


def training_seconds(result: BenchmarkResult) -> float | None:
    """The training work of a result: the centralised loop's seconds, or the silos' local
    training seconds summed over silos and rounds (``None`` if not recorded)."""
    key = "train-seconds" if result.setting == "central" else "silo-train-seconds"
    value = result.extra.get(key)
    return None if value is None else float(value)


def overhead_seconds(result: BenchmarkResult) -> float | None:
    """What a result's wall time spent outside its rounds (FL: start-up, roll call,
    round-0 evaluation, shutdown = total − Σ round-seconds) or outside its training loop
    (central: pooling the silos' rows, building the model, evaluating)."""
    inner = (
        result.extra.get("train-seconds")
        if result.setting == "central"
        else result.extra.get("rounds-seconds")
    )
    return None if inner is None else result.seconds - float(inner)


@dataclass(frozen=True)
class Summary:
    """One row of the report: a task's setting over its seeds (values are per-seed lists,
    in seed order; gaps are paired by seed with the centralised result)."""

    task: str
    setting: str
    seeds: tuple[int | None, ...]
    metrics: dict[str, list[float]]
    primary: tuple[str, ...]
    gaps: dict[str, list[float]] | None
    seconds: list[float]
    training: list[float]
    rounds: list[float]
    overhead: list[float]
    time_ratio: list[float]
    training_ratio: list[float]
    collapsed: int


def summarise(results: Sequence[BenchmarkResult]) -> list[Summary]:
    """The results grouped by (task, setting), in first-seen order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(results):
        groups.setdefault((r.task, r.setting), []).append(i)
    per_gap, per_ratio = gaps(results), time_ratios(results)
    per_training_ratio = time_ratios(results, training_seconds)
    out = []
    for (task, setting), idx in groups.items():
        rows = [results[i] for i in idx]
        keys = list(dict.fromkeys(k for r in rows for k in r.metrics))
        primary = primary_metrics(rows[0].metrics)
        row_gaps = [per_gap[i] for i in idx if per_gap[i] is not None]
        out.append(
            Summary(
                task=task,
                setting=setting,
                seeds=tuple(r.seed for r in rows),
                metrics={k: [r.metrics[k] for r in rows if k in r.metrics] for k in keys},
                primary=primary,
                gaps=(
                    {m: [g[m] for g in row_gaps if m in g] for m in primary} if row_gaps else None
                ),
                seconds=[r.seconds for r in rows],
                training=[t for r in rows if (t := training_seconds(r)) is not None],
                rounds=[float(r.extra["rounds-seconds"]) for r in rows
                        if r.extra.get("rounds-seconds") is not None],
                overhead=[o for r in rows if (o := overhead_seconds(r)) is not None],
                time_ratio=[per_ratio[i] for i in idx if per_ratio[i] is not None],
                training_ratio=[
                    per_training_ratio[i] for i in idx if per_training_ratio[i] is not None
                ],
                collapsed=sum(collapsed(r) for r in rows),
            )
        )  # fmt: skip
    return out


# --------------------------------------------------------------------------- rendering
SETTING_LABELS = {
    "central": "centralised (pooled silos)",
    "iid": "FL, IID",
    "dirichlet": f"FL, Dirichlet α={DIRICHLET_ALPHA:g}",
}
METRIC_SHORT = {"accuracy": "acc", "roc-auc": "ROC", "pr-auc": "PR", "entity-f1": "entity F1"}
COLUMNS = (
    "task", "setting", "seeds", "accuracy", "ROC-AUC", "PR-AUC", "F1 / macro-F1",
    "gap to central (pts)",
)  # fmt: skip
TIME_COLUMNS = (
    "task", "setting", "total s", "rounds s", "training s", "overhead s",
    "FL / central: total", "FL / central: training",
)  # fmt: skip


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _values(values: Sequence[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def _mean_std(values: Sequence[float], digits: int = 4, sign: bool = False) -> str:
    """``mean ± std`` (sample std over seeds; just the value for one seed; ``–`` for none;
    NaN values left out)."""
    data = _values(values)
    if not data:
        return "–"
    mean, std = harness.mean_std(data)
    head = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return head if len(data) < 2 else f"{head} ± {std:.{digits}f}"


def _ratio(values: Sequence[float]) -> str:
    data = _values(values)
    if not data:
        return "–"
    mean = sum(data) / len(data)
    return f"×{mean:.0f}" if mean >= 10 else f"×{mean:.1f}" if mean >= 1 else f"×{mean:.2f}"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _fmt(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def _seeds(seeds: Sequence[int | None]) -> str:
    known = [str(s) for s in seeds if s is not None]
    return ", ".join(known) if len(known) == len(seeds) else str(len(seeds))


def table_rows(results: Sequence[BenchmarkResult], *, bold: bool = False) -> list[list[str]]:
    """One list of cell strings per (task, setting), in :data:`COLUMNS` order: each metric
    as mean ± std over seeds, the gap as the mean ± std of the per-seed differences to the
    centralised result; primary metrics in ``**bold**`` when ``bold``."""
    rows = []
    for s in summarise(results):

        def cell(metric: str, s=s) -> str:
            text = _mean_std(s.metrics.get(metric, []))
            return f"**{text}**" if bold and metric in s.primary and text != "–" else text

        f1_key = next((k for k in ("f1", "f1-macro", "entity-f1") if k in s.metrics), "f1")
        gap_text = (
            "reference"
            if s.gaps is None
            else " · ".join(
                f"{_mean_std(v, 1, sign=True)} {METRIC_SHORT.get(m, m)}" for m, v in s.gaps.items()
            )
        )
        rows.append([
            s.task,
            SETTING_LABELS.get(s.setting, s.setting),
            _seeds(s.seeds),
            cell("accuracy"),
            cell("roc-auc"),
            cell("pr-auc"),
            cell(f1_key),
            gap_text,
        ])  # fmt: skip
    return rows


def time_rows(results: Sequence[BenchmarkResult]) -> list[list[str]]:
    """One list of cell strings per (task, setting), in :data:`TIME_COLUMNS` order (mean ±
    std over seeds)."""
    rows = []
    for s in summarise(results):
        central = s.setting == "central"
        rows.append([
            s.task,
            SETTING_LABELS.get(s.setting, s.setting),
            _mean_std(s.seconds, 1),
            "–" if central else _mean_std(s.rounds, 1),
            _mean_std(s.training, 1),
            _mean_std(s.overhead, 1),
            "–" if central else _ratio(s.time_ratio),
            "–" if central else _ratio(s.training_ratio),
        ])  # fmt: skip
    return rows


def markdown_table(results: Sequence[BenchmarkResult]) -> str:
    """The results as a Markdown table (primary metrics in bold)."""
    return Table(COLUMNS, left=3).extend(table_rows(results, bold=True)).markdown()


def markdown_time_table(results: Sequence[BenchmarkResult]) -> str:
    """Where the seconds went, per (task, setting), as a Markdown table."""
    return Table(TIME_COLUMNS, left=2).extend(time_rows(results)).markdown()


def render_markdown(
    results: Sequence[BenchmarkResult], meta: Mapping[str, Any], rendered: str = ""
) -> str:
    """``docs/benchmarks.md``: what was compared, how, and the table (``rendered``: the note
    of a ``--render-only`` run)."""
    sizes = meta.get("data", {})
    size_lines = []
    for task, s in sizes.items():
        size_lines.append(
            f"| {task} | {s['pool-rows']} | {s['silo-train-rows']} "
            f"| {s['iid-silo-rows'][0]}–{s['iid-silo-rows'][1]} "
            f"| {s['dirichlet-silo-rows'][0]}–{s['dirichlet-silo-rows'][1]} "
            f"| {s['test-rows']} | {_rate(s.get('test-positive-rate'))} |"
        )
    rounds, epochs = meta["num-server-rounds"], meta["local-epochs"]
    client_eval = (
        "silos also score every round's global model on their validation rows"
        if meta.get("client-eval")
        else "client-side evaluation off, `sampling.fraction-evaluate = 0`: it does not change the "
        "model and the comparison reads the server's metrics only"
    )
    silos = meta["num-silos"]
    parts = [
        "# Federated vs centralised training",
        "",
        "<!-- Generated by `python -m benchmarks.centralized`; do not edit by hand. -->",
        "",
        " ".join(
            [
                f"What keeping the data in **{silos} silos** costs. Each federated run is a real",
                f"`flwr run . --stream` in local simulation ({silos} SuperNodes,",
                f"`{meta['strategy']}`, every silo trains every round; {client_eval}) for",
                f"**{rounds} rounds × {epochs} local epochs**, batch size {meta['batch-size']},",
                f"SGD learning rate {meta['learning-rate']}, momentum {meta['momentum']}"
                + _overrides_text(meta.get("data", {}))
                + ",",
                f"{_seeds_text(meta)}. The metrics are the server's evaluation of the final",
                "global model on its held-out test set",
                f"({meta['test-fraction']:.0%} of each data set, stratified). Silo data is split",
                f"either IID or with Dirichlet label skew (α = {meta['dirichlet-alpha']:g}); each",
                f"silo keeps {meta['val-fraction']:.0%} of its share for its own validation.",
            ]
        ),
        "",
        " ".join(
            [
                "The **centralised** baseline trains the same model, in one process, on the union",
                f"of exactly the rows the silos train on (the {silos} silos' IID training splits),",
                "with the same batch size, learning rate and momentum, the same seeded",
                "initialisation as the server's global model and the same input standardisation",
                "(from the silos' pooled feature moments). **Total epochs are matched**: in FL",
                f"every training row is visited {epochs} times per round for {rounds} rounds, so",
                f"the baseline trains for {rounds} × {epochs} = **{meta['total-epochs']} epochs**.",
                "It is evaluated with the same code on the same server test set. (Fraud's class",
                "weights come from the pooled rows instead of each silo's own; under Dirichlet the",
                "silos' union differs from the IID union only by which rows each silo keeps for",
                "validation.)",
            ]
        ),
        "",
        "| task | train pool rows | rows silos train on | per silo (IID) "
        "| per silo (Dirichlet) | test rows | positives (test) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *size_lines,
        "",
        "Primary metrics (bold): accuracy for digits (10 classes), ROC-AUC and PR-AUC for "
        "the binary tasks (PR-AUC's chance level is the positive rate above), entity-level "
        "F1 for NER (exact span and type, micro-averaged; its accuracy is per token). F1 is "
        "for the positive class on binary tasks, macro-F1 on digits. Every cell is the mean "
        "± the sample standard deviation over the seeds in the *seeds* column (a seed "
        "changes the model's initialisation, the split into test set and silos, and the "
        "batch order, on both sides alike). *Gap* = FL − central in percentage points of "
        "the primary metric(s), taken per seed (the FL run against the centralised run of "
        "the same seed) and stated as the mean ± std of those differences.",
        "",
        markdown_table(results),
        "",
        *notes(results),
        GAP_ANALYSIS_FILE.read_text().strip() if GAP_ANALYSIS_FILE.is_file() else "",
        "",
        "### Where the time goes",
        "",
        "Wall-clock seconds, measured by the same benchmark process (mean ± std over "
        "seeds). *total*: for FL the whole `flwr run`, for the baseline pooling the silo "
        "rows, training and evaluating in-process (one torch thread, as each silo uses). "
        "*rounds*: the FL rounds' wall time, summed (the server's `round-seconds`: sending "
        "the model, the silos' training, collecting and aggregating the replies, evaluating "
        "on the test set, checkpointing). *training*: the training work alone — for the "
        "baseline its training loop, for FL the silos' own local-training seconds "
        "(`local-train-seconds`, each silo on one thread) summed over silos and rounds. "
        "*overhead*: FL total − rounds (starting the local SuperLink and the simulation "
        "runtime, packaging the app, the roll call and round-0 evaluation, shutdown); "
        "baseline total − training (pooling the rows, evaluating).",
        "",
        markdown_time_table(results),
        "",
        time_note(results),
        "",
        load_note(results, meta.get("cpus", cpu_count())),
        "",
        provenance_note(meta),
        "",
        f"Environment: {meta['machine']}; flwr {meta['flwr']}, torch {meta['torch']}, "
        f"Python {meta['python']}; code {meta.get('git') or 'unknown'}. Regenerate with "
        + (
            f"`{meta['command']}`"
            if not provenance_note(meta)
            else "`python -m benchmarks.centralized` (every task), or one task's rows with "
            "`python -m benchmarks.centralized --tasks <task> --merge`"
        )
        + " (same config → same metrics; only the seconds vary)."
        + (f" {rendered}" if rendered else ""),
        "",
    ]
    return "\n".join(parts)


#: What was tried to close the gaps, with the probes' figures: hand-written Markdown next to
#: this module (the probes, ``benchmarks.centralized_probe``, are not rerun by this benchmark).
GAP_ANALYSIS_FILE = Path(__file__).with_name("centralized_gaps.md")


def _seeds_text(meta: Mapping[str, Any]) -> str:
    seeds = meta.get("seeds") or [meta.get("seed")]
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"seeds {', '.join(str(s) for s in seeds)} (every setting is run once per seed)"


def time_note(results: Sequence[BenchmarkResult]) -> str:
    """Where the FL runs' seconds went, over all FL rows of the report: the share that is
    start-up and shutdown, and how the silos' summed training compares to the rounds."""
    fl = [r for r in results if r.setting != "central"]
    total = sum(r.seconds for r in fl)
    rounds = [r for r in fl if r.extra.get("rounds-seconds") is not None]
    trained = [r for r in rounds if r.extra.get("silo-train-seconds") is not None]
    if not total or not rounds or not trained:
        return ""
    outside = sum(overhead_seconds(r) or 0.0 for r in rounds)
    in_rounds = sum(float(r.extra["rounds-seconds"]) for r in trained)
    work = sum(float(r.extra["silo-train-seconds"]) for r in trained)
    return (
        f"Over the FL runs above, {outside / sum(r.seconds for r in rounds):.0%} of the "
        "wall time is outside the rounds (start-up and shutdown: a fixed cost per run, "
        "whatever the task, which is why tiny tasks show large total ratios); within the "
        f"rounds, the silos' training adds up to {work / in_rounds:.0%} of the rounds' wall "
        "time (the 10 silos share the machine's CPUs, so their training seconds overlap; "
        "the rest of a round is messaging through the SuperLink, Flower's reply polling, "
        "aggregation and the server's evaluation and checkpoint)."
    )


def _overrides_text(tasks: Iterable[str]) -> str:
    """`` (fraud: learning rate 0.01; …, for FL and central alike)`` for the reported
    tasks with per-task hyper-parameters (:data:`TASK_OVERRIDES`), else ``""``."""
    parts = [
        f"{task}: " + ", ".join(f"{k.replace('-', ' ')} {v}" for k, v in o.items())
        for task, o in TASK_OVERRIDES.items()
        if task in tasks and o
    ]
    if not parts:
        return ""
    return (
        f" ({'; '.join(parts)}; training keys and rounds for FL and central alike, the "
        "strategy and server keys for FL only)"
    )


def notes(results: Sequence[BenchmarkResult]) -> list[str]:
    """Warnings under the table (collapsed models), as Markdown paragraphs."""
    lines = []
    for r in results:
        if collapsed(r):
            lines += [
                f"**Note — {r.task}, {SETTING_LABELS.get(r.setting, r.setting)}:** test ROC-AUC "
                f"{_num(r.metrics.get('roc-auc'))} is chance level: with these shared "
                "hyper-parameters this model collapsed to (near-)constant scores. That is a "
                "training failure of this setting, so gaps against it do not measure the "
                "cost of federation.",
                "",
            ]
    return lines


def to_json(results: Sequence[BenchmarkResult], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Machine-readable form: ``{"meta": …, "rows": […]}`` (NaN → null)."""

    rows = []
    for r, gap, ratio in zip(results, gaps(results), time_ratios(results), strict=True):
        row = asdict(r)
        row.update(
            label=SETTING_LABELS.get(r.setting, r.setting),
            primary=list(primary_metrics(r.metrics)),
            gap_points=gap,
            collapsed=collapsed(r),
            time_ratio_vs_central=ratio,
            metrics=dict(r.metrics),
            extra=dict(r.extra),
        )
        rows.append(harness.json_safe(row, infinity=True))
    summary = [asdict(s) for s in summarise(results)]
    return {
        "meta": harness.json_safe(dict(meta), infinity=True),
        "summary": harness.json_safe(summary, infinity=True),
        "rows": rows,
    }


#: Meta keys every row of one report shares (one header describes them all).
SHARED_SETTINGS = (
    "num-silos", "strategy", "num-server-rounds", "local-epochs", "batch-size",
    "learning-rate", "momentum", "seeds", "test-fraction", "val-fraction", "dirichlet-alpha",
    "client-eval",
)  # fmt: skip


def results_from_json(data: Mapping[str, Any]) -> list[BenchmarkResult]:
    """The rows of a :func:`to_json` report as results (null → NaN)."""

    def num(value: Any) -> float:
        return float("nan") if value is None else float(value)

    return [
        BenchmarkResult(
            task=row["task"],
            setting=row["setting"],
            metrics={k: num(v) for k, v in row["metrics"].items()},
            seconds=float(row["seconds"]),
            train_rows=int(row["train_rows"]),
            epochs=int(row["epochs"]),
            extra=dict(row.get("extra") or {}),
            seed=row.get("seed"),
        )
        for row in data.get("rows", [])
    ]


def merge_reports(
    previous: Mapping[str, Any], results: Sequence[BenchmarkResult], meta: Mapping[str, Any]
) -> tuple[list[BenchmarkResult], dict[str, Any]]:
    """``previous`` (a :func:`to_json` report) with the tasks of ``results`` replaced by
    these results: other tasks' rows are kept as they are, in their order, new tasks come
    after them. ``meta["provenance"]`` records, per task, the code and command its rows
    come from. Raises :class:`BenchmarkError` when the report used other shared settings
    (rounds, epochs, seed, …), whose rows one header could not describe."""
    old_meta = dict(previous.get("meta") or {})
    differ = {
        k: (old_meta.get(k), meta.get(k))
        for k in SHARED_SETTINGS
        if (k in old_meta or k == "seeds") and old_meta.get(k) != meta.get(k)
    }
    if differ:
        raise BenchmarkError(
            "cannot merge into a report made with other settings (key: (report, this run)): "
            f"{differ}; rerun every task without --merge, or use the report's settings"
        )
    new_tasks = list(dict.fromkeys(r.task for r in results))
    kept = [r for r in results_from_json(previous) if r.task not in new_tasks]
    order = list(dict.fromkeys([*(r.task for r in kept), *new_tasks]))
    merged = sorted([*kept, *results], key=lambda r: order.index(r.task))
    old_data = old_meta.get("data") or {}
    sizes = {**old_data, **(meta.get("data") or {})}
    data = {t: sizes[t] for t in order if t in sizes}
    provenance = dict(
        old_meta.get("provenance")
        or {t: {"git": old_meta.get("git"), "command": old_meta.get("command")} for t in old_data}
    )
    for t in new_tasks:
        provenance[t] = {"git": meta.get("git"), "command": meta.get("command")}
    provenance = {t: provenance[t] for t in order if t in provenance}
    return merged, {**meta, "data": data, "provenance": provenance}


def provenance_note(meta: Mapping[str, Any]) -> str:
    """Which code and command produced which tasks' rows, when a report was merged from
    several runs (``""`` otherwise)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for task, p in (meta.get("provenance") or {}).items():
        key = (p.get("git") or "unknown", p.get("command") or "unknown")
        groups.setdefault(key, []).append(task)
    if len(groups) < 2:
        return ""
    parts = [
        f"{', '.join(tasks)}: code {git}, `{command}`" for (git, command), tasks in groups.items()
    ]
    return (
        "Rows were measured by separate runs of this benchmark with the same settings and "
        "merged (`--merge`): " + "; ".join(parts) + "."
    )


def print_table(results: Sequence[BenchmarkResult]) -> None:
    """The results as a table on stdout (rich if available)."""
    table = Table(COLUMNS, left=3, title="Federated vs centralised (server test set)")
    table.extend(table_rows(results)).print(width=180)
    Table(TIME_COLUMNS, left=2, title="Seconds").extend(time_rows(results)).print(width=180)


# --------------------------------------------------------------------------- metadata
def describe(
    cfg: RunConfig, tasks: Sequence[str], command: str, seeds: Sequence[int] | None = None
) -> dict[str, Any]:
    """Settings, data sizes and environment of a benchmark (the docs' intro)."""
    data = {}
    for name in tasks:
        task = get_task(name)
        iid = cfg.replace({"task": name, "data.partitioner": "iid"})
        skew = cfg.replace({"task": name, "data.partitioner": "dirichlet"})
        pool, test = task.split(iid.data, iid.seed)
        iid_rows = [
            len(task.load_partition(i, NUM_SILOS, iid.data, iid.seed).train)
            for i in range(NUM_SILOS)
        ]
        skew_rows = [
            len(task.load_partition(i, NUM_SILOS, skew.data, skew.seed).train)
            for i in range(NUM_SILOS)
        ]
        data[name] = {
            "pool-rows": len(pool),
            "test-rows": len(test),
            "silo-train-rows": sum(iid_rows),
            "iid-silo-rows": [min(iid_rows), max(iid_rows)],
            "dirichlet-silo-rows": [min(skew_rows), max(skew_rows)],
            "test-positive-rate": float(test.y.mean()) if task.num_classes == 2 else None,
        }
    return {
        "num-silos": NUM_SILOS,
        "strategy": cfg.strategy,
        "num-server-rounds": cfg.num_server_rounds,
        "local-epochs": cfg.training.local_epochs,
        "total-epochs": cfg.num_server_rounds * cfg.training.local_epochs,
        "batch-size": cfg.training.batch_size,
        "learning-rate": cfg.training.learning_rate,
        "momentum": cfg.training.momentum,
        "seed": cfg.seed,
        "seeds": list(seeds) if seeds else [cfg.seed],
        "test-fraction": cfg.data.test_fraction,
        "val-fraction": cfg.data.val_fraction,
        "dirichlet-alpha": cfg.data.dirichlet_alpha,
        "client-eval": cfg.sampling.fraction_evaluate > 0,
        "data": data,
        "flwr": version("flwr"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": harness.machine(),
        "git": code_version().short,
        "cpus": cpu_count(),
        "command": command,
    }


def load_note(results: Sequence[BenchmarkResult], cpus: int) -> str:
    """One sentence on how busy the machine was when each timing ended."""
    loads = [r.extra.get("load-1min") for r in results]
    loads = [x for x in loads if x is not None]
    if not loads:
        return ""
    busy = " (busier than its CPUs: seconds are inflated)" if max(loads) > cpus else ""
    return (
        f"The 1-minute load average at the end of each timed run was "
        f"{min(loads):.1f}–{max(loads):.1f} on {cpus} CPUs{busy}."
    )


# --------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = harness.parser(
        "Federated (flwr run, 10 silos) vs centralised training, same total epochs.",
        prog="python -m benchmarks.centralized",
        quick=f"smoke test: {QUICK_ROUNDS} rounds unless --rounds; writes files only with --out",
        rounds=harness.opt(None, "num-server-rounds (default: the app's, from pyproject.toml)"),
        seeds=harness.opt(
            list(DEFAULT_SEEDS),
            "run seeds: every setting runs once per seed, each row reports mean ± std "
            f"(default: {' '.join(map(str, DEFAULT_SEEDS))}; --quick: the first)",
        ),
        merge="keep the other tasks' rows of the existing report (--out and its .json) and "
        "replace only the rows of --tasks",
        out=harness.opt(
            None, f"Markdown output; the JSON goes next to it (default: {DEFAULT_OUT})"
        ),
        render_only="rewrite the Markdown from the JSON next to --out (no runs)",
    )
    parser.add_argument(
        "--tasks", nargs="+", default=list(DEFAULT_TASKS), metavar="TASK",
        help=f"tasks to benchmark (default: {' '.join(DEFAULT_TASKS)})",
    )  # fmt: skip
    parser.add_argument(
        "--client-eval", action="store_true",
        help="keep client-side evaluation on (the app's sampling.fraction-evaluate); "
             "off by default",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick and args.rounds is None:
        args.rounds = QUICK_ROUNDS
    if args.quick and args.seeds == list(DEFAULT_SEEDS):
        args.seeds = args.seeds[:1]
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds: repeated seed in {args.seeds}")
    harness.resolve_out(args, DEFAULT_OUT, parser)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    harness.log_to_console()
    args = parse_args(argv)
    if args.render_only:
        out = Path(args.out or DEFAULT_OUT)
        data = json.loads(out.with_suffix(".json").read_text())
        note = harness.rerender_note("centralized")
        out.write_text(render_markdown(results_from_json(data), data["meta"], note))
        print(f"wrote {out} from {out.with_suffix('.json')}")
        return 0
    session = harness.start("centralized", argv, args.out, allow_dirty=args.allow_dirty)
    command, code = session.command, session.code
    results: list[BenchmarkResult] = []
    with project_snapshot() as snapshot:
        LOG.info("running the app from a snapshot of %s in %s", PROJECT_DIR, snapshot)
        try:
            plans = [
                plan_task(
                    task, rounds=args.rounds, seed=seed, client_eval=args.client_eval,
                    project_dir=snapshot,
                )
                for task in args.tasks
                for seed in args.seeds
            ]  # fmt: skip
        except ValueError as exc:  # ConfigError: unknown task, bad rounds, …
            print(f"error: {exc}", file=sys.stderr)
            return 2
        # The settings every task shares: a task's config without its own overrides.
        base = (
            plans[0]
            .federated[0][1]
            .replace(
                {
                    k: v
                    for k, v in app_defaults(snapshot).items()
                    if k in TASK_OVERRIDES.get(plans[0].task, {})
                }
                | {"task-defaults": False}
            )
        )
        seed_everything(base.seed)
        meta = describe(base, args.tasks, command.strip(), args.seeds)
        if code.dirty and code.allow_dirty:
            meta["git"] = f"{code.short} (written with `--allow-dirty`)"
        previous = None
        if args.out and args.merge:
            previous_json = Path(args.out).with_suffix(".json")
            if not previous_json.is_file():
                print(f"error: --merge: no report {previous_json} to merge into", file=sys.stderr)
                return 2
            previous = json.loads(previous_json.read_text())
            try:  # refuse up front, not after the runs
                merge_reports(previous, [], meta)
            except BenchmarkError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        try:
            for i, plan in enumerate(plans):
                results += benchmark_task(plan, project_dir=snapshot)
                last_of_task = i + 1 == len(plans) or plans[i + 1].task != plan.task
                if args.out and last_of_task:  # a task's rows are kept even if a later one fails
                    write_report(Path(args.out), results, meta, previous)
        except BenchmarkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if results:
                print_table(results)
            return 1

    print_table(results)
    return 0


def write_report(
    out: Path,
    results: Sequence[BenchmarkResult],
    meta: Mapping[str, Any],
    previous: Mapping[str, Any] | None = None,
) -> None:
    """``out`` and the JSON next to it from ``results`` (merged into ``previous``, a
    :func:`to_json` report, when given)."""
    if previous is not None:
        results, meta = merge_reports(previous, results, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(results, meta))
    json_out = out.with_suffix(".json")
    json_out.write_text(json.dumps(to_json(results, meta), indent=2) + "\n")
    print(f"wrote {out} and {json_out}")


if __name__ == "__main__":
    sys.exit(main())
