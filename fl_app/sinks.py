"""Where a run's parameters and metrics go. The core loop talks to :class:`MetricsSink`
only; console, run-directory files (and, via adapters, MLflow) implement it."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fl_app import LOG
from fl_core.config import Section, transient
from fl_core.registry import Registry
from strategies.fairness import is_fairness_key, summaries_in
from tasks.personalization import PERSONAL_PREFIX

if TYPE_CHECKING:
    from fl_app.config import RunConfig


class TrackingSection(Section):
    """Experiment tracking with MLflow (adapters/mlflow): one parent run per federation,
    one nested run per silo."""

    mlflow_uri: str = transient(
        "",
        description='MLflow tracking URI (file path, sqlite:, http(s)://, azureml://); "" = off.',
    )
    experiment: str = transient("fedsilo", description="MLflow experiment name.")
    register_model: str = transient(
        "auto",
        description='Register the final model under this name ("auto" = fedsilo-<task>, "" = '
        "do not register); alias `champion` moves to it only if it beats the champion on "
        "this run's server test set.",
    )
    sinks: str = transient(
        "",
        description="More metrics sinks by registered name, comma-separated (entry-point "
        "group `fedsilo.sinks`, see docs/extending.md); `mlflow` is on whenever "
        "`tracking.mlflow-uri` is set.",
    )


class MonitoringSection(Section):
    """Live monitoring of the running federation: a Prometheus exporter in the ServerApp
    (adapters/prometheus; docs/operations.md). Off by default."""

    prometheus_port: int = transient(
        0,
        ge=0,
        le=65535,
        description="Serve Prometheus metrics (/metrics) on this port while the run lasts "
        "(0 = off). One run per port: a port in use stops the run before round 1.",
    )
    prometheus_host: str = transient(
        "0.0.0.0",
        description="Address the exporter listens on (0.0.0.0 = every interface; "
        "127.0.0.1 = this machine only).",
    )
    final_scrape_wait: float = transient(
        15.0,
        ge=0.0,
        le=600.0,
        description="At the run's end, wait up to this many seconds for one scrape of the "
        "final figures before the exporter stops (0 = stop at once).",
    )


#: Metric (1.0 / 0.0) and audit field (bool) saying whether the run's DP noise is secret.
DP_PRIVATE_KEY = "dp-private"
#: ``phase`` of the row at the top of ``metrics.json`` that states the run's privacy.
PRIVACY_PHASE = "privacy"
#: Phases whose metrics carry :data:`DP_PRIVATE_KEY`.
TAGGED_PHASES = ("train", "server")


@dataclass(frozen=True)
class PrivacyStatus:
    """Whether a run with DP noise is private, and the sentence that says so."""

    mechanisms: tuple[str, ...]
    private: bool

    @property
    def statement(self) -> str:
        """One sentence for ``metrics.json`` and the log."""
        on = ", ".join(self.mechanisms)
        if self.private:
            return (
                f"DP noise ({on}) and DP sampling come from OS entropy and are kept by the "
                "party that adds them; the reported epsilon holds under the stated threat "
                "model (docs/privacy.md)."
            )
        return (
            f"NOT PRIVATE: dp.reproducible-noise = true seeds the DP noise ({on}) and DP "
            "sampling from the public `seed`, so anyone holding config.json can regenerate "
            "and subtract the noise; the reported epsilon protects nothing. For research "
            "reruns only."
        )

    def row(self) -> dict[str, Any]:
        """The row at the top of ``metrics.json`` (round 0, phase ``privacy``)."""
        return {
            "round": 0,
            "phase": PRIVACY_PHASE,
            DP_PRIVATE_KEY: float(self.private),
            "dp-mechanisms": " ".join(self.mechanisms),
            "statement": self.statement,
        }

    def tags(self) -> dict[str, float]:
        """Metrics added to every train and server row."""
        return {DP_PRIVATE_KEY: float(self.private)}


def privacy_status(cfg: RunConfig) -> PrivacyStatus | None:
    """The run's :class:`PrivacyStatus` (``None`` without DP noise); logs a warning when
    ``dp.reproducible-noise`` makes the noise derivable from the public config."""
    mechanisms = cfg.dp_mechanisms()
    if not mechanisms:
        return None
    status = PrivacyStatus(tuple(mechanisms), private=not cfg.dp.reproducible_noise)
    if not status.private:
        LOG.warning("[fedsilo] %s", status.statement)
    return status


def is_runtime_metric(key: str) -> bool:
    """Whether metric ``key`` measures the runtime rather than the model — wall-clock
    seconds (``train-seconds``, ``round-seconds``, …) or serialised message bytes
    (``bytes-uploaded``, …; ids in a message differ between runtimes) — so it differs
    between two runs of one seeded config."""
    return key.endswith("seconds") or key.startswith("bytes-")


class MetricsSink(Protocol):
    """Receives a run's parameters, per-round metrics and final artefacts."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Called once with the resolved run config."""

    def log_metrics(self, server_round: int, phase: str, metrics: Mapping[str, float]) -> None:
        """Called per round and phase (``train``, ``evaluate``, ``server``)."""

    def log_silo_metrics(
        self, server_round: int, phase: str, partition_id: int, metrics: Mapping[str, float]
    ) -> None:
        """Called per round, phase and silo with that silo's own reported metrics."""

    def log_artifact(self, path: Path) -> None:
        """Called with each file the run writes (model, metrics)."""

    def close(self) -> None:
        """Called once at the end of the run."""


class EventSink(Protocol):
    """A sink that also wants the run's audit events (optional: :class:`Sinks` calls
    ``log_event`` on the sinks that have it)."""

    def log_event(self, entry: Mapping[str, Any]) -> None:
        """Called with every audit-log entry (``event``, ``round``, … as in
        ``audit.jsonl``; see :mod:`fl_app.audit`) once it is written."""


def metric_value(value: Any) -> float | None:
    """A logged metric as a finite float; ``None`` for NaN/Inf, booleans and non-numbers
    (the exporter, run inspection and the MLflow run list read metrics through it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_number(value: Any) -> Any:
    """NaN/Inf → ``None`` (JSON has no NaN)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _fmt(metrics: Mapping[str, float]) -> str:
    return " ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
    )


class ConsoleSink:
    """One log line per round and phase; the evaluate phase's fairness summary
    (:mod:`strategies.fairness`) gets a line of its own per metric."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, server_round, phase, metrics) -> None:
        summaries = summaries_in(metrics)
        rest = {k: v for k, v in metrics.items() if not is_fairness_key(k)}
        LOG.info("[fedsilo] round %d %s: %s", server_round, phase, _fmt(rest))
        for metric, stats in summaries.items():
            LOG.info(
                "[fedsilo] round %d fairness of %s over %d silos: %s",
                server_round, metric, int(stats.get("silos", 0)), _fmt(
                    {k: v for k, v in stats.items() if k != "silos"}),
            )  # fmt: skip
        for metric, stats in summaries.items():
            personal = summaries.get(PERSONAL_PREFIX + metric)
            if personal is not None and {"min", "mean"} <= stats.keys() & personal.keys():
                LOG.info(
                    "[fedsilo] round %d %s global vs personal: worst %.4f vs %.4f, mean "
                    "%.4f vs %.4f",
                    server_round, metric, stats["min"], personal["min"], stats["mean"],
                    personal["mean"],
                )  # fmt: skip

    def log_silo_metrics(self, server_round, phase, partition_id, metrics) -> None:
        pass

    def log_artifact(self, path: Path) -> None:
        pass

    def close(self) -> None:
        pass


class RunDirSink:
    """Writes ``config.json``, ``metrics.json`` / ``metrics.csv`` (aggregated and server
    metrics) and ``silo_metrics.json`` into the run directory, rewritten once per round (at
    the round's ``server`` row, which follows its checkpoint) and at :meth:`close`, so a
    crashed run keeps every round it finished.

    ``metrics.json`` is a list of rows ``{"round", "phase", metric: value, …}``. A run with
    DP noise (``privacy``) starts it with one row of phase ``privacy`` stating whether the
    run is private (:meth:`PrivacyStatus.row`); readers that select rows by phase are
    unaffected.
    """

    def __init__(
        self,
        run_dir: Path,
        resume_after: int | None = None,
        privacy: PrivacyStatus | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.rows: list[dict[str, Any]] = []
        self.silo_rows: list[dict[str, Any]] = []
        self._pending = False  # rows logged since the files were last written
        if resume_after is not None:  # a resumed run keeps the rounds it is not redoing
            previous = self._previous("metrics.json", resume_after)
            self.rows = [row for row in previous if row.get("phase") != PRIVACY_PHASE]
            self.silo_rows = self._previous("silo_metrics.json", resume_after)
        if privacy is not None:
            self.rows.insert(0, privacy.row())

    def _previous(self, name: str, last_round: int) -> list[dict[str, Any]]:
        path = self.run_dir / name
        rows = json.loads(path.read_text()) if path.is_file() else []
        return [row for row in rows if row.get("round", 0) <= last_round]

    def log_silo_metrics(self, server_round, phase, partition_id, metrics) -> None:
        self.silo_rows.append(
            {
                "round": server_round,
                "phase": phase,
                "partition-id": partition_id,
                **{k: _json_number(v) for k, v in metrics.items()},
            }
        )  # written with the round's rows (see log_metrics): once per round, not once per
        # silo or phase, each of which rewrote a growing file

    def log_params(self, params: Mapping[str, Any]) -> None:
        (self.run_dir / "config.json").write_text(json.dumps(dict(params), indent=2) + "\n")

    def log_metrics(self, server_round, phase, metrics) -> None:
        # Written once per round, not once per phase: the server row (evaluation and
        # checkpoint) ends a round; a round without one is written when the next starts.
        last = next((r["round"] for r in reversed(self.rows) if r["phase"] != PRIVACY_PHASE), 0)
        if server_round != last and self._pending:
            self._flush()
        row = {"round": server_round, "phase": phase}
        row.update({k: _json_number(v) for k, v in metrics.items()})
        self.rows.append(row)
        self._pending = True
        if phase == "server":
            self._flush()

    def _flush(self) -> None:
        self._pending = False
        (self.run_dir / "metrics.json").write_text(json.dumps(self.rows, indent=1) + "\n")
        if self.silo_rows:
            (self.run_dir / "silo_metrics.json").write_text(json.dumps(self.silo_rows) + "\n")
        columns = ["round", "phase"]
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        with (self.run_dir / "metrics.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def log_artifact(self, path: Path) -> None:
        if self._pending:  # the sinks after this one may upload the files: bring them up to date
            self._flush()

    def close(self) -> None:
        self._flush()


class Sinks:
    """Fans every call out to several sinks; ``privacy`` adds ``dp-private`` to every
    train and server row."""

    def __init__(self, *sinks: MetricsSink, privacy: PrivacyStatus | None = None) -> None:
        self.sinks = list(sinks)
        self.tags = privacy.tags() if privacy is not None else {}

    def log_params(self, params):
        for s in self.sinks:
            s.log_params(params)

    def log_metrics(self, server_round, phase, metrics):
        if self.tags and phase in TAGGED_PHASES:
            # A flag the silos reported (local DP) can only lower the run's: keep the minimum.
            metrics = {**metrics, **{k: min(v, metrics.get(k, v)) for k, v in self.tags.items()}}
        for s in self.sinks:
            s.log_metrics(server_round, phase, metrics)

    def log_silo_metrics(self, server_round, phase, partition_id, metrics):
        for s in self.sinks:
            s.log_silo_metrics(server_round, phase, partition_id, metrics)

    def log_artifact(self, path):
        for s in self.sinks:
            s.log_artifact(path)

    def log_event(self, entry: Mapping[str, Any]) -> None:
        """Hand an audit-log entry to every sink that takes events (:class:`EventSink`)."""
        for s in self.sinks:
            if (log_event := getattr(s, "log_event", None)) is not None:
                log_event(entry)

    def close(self):
        for s in self.sinks:
            s.close()


#: Metrics sink name → factory ``(cfg, run_dir) -> MetricsSink`` (imported on first use).
#: The MLflow sink registers as ``mlflow`` (:mod:`adapters.mlflow.sink`, wired by the
#: app's composition root :mod:`adapters.app`); a separate package adds one through the
#: entry-point group ``fedsilo.sinks``.
SINKS: Registry[Callable[[RunConfig, Path], MetricsSink]] = Registry(
    "metrics sink", group="fedsilo.sinks", lazy=True
)


def tracking_sinks(cfg: RunConfig, run_dir: Path) -> list[MetricsSink]:
    """Sinks the run config turns on: ``mlflow`` when ``tracking.mlflow-uri`` is set,
    ``prometheus`` when ``monitoring.prometheus-port`` is, and every name in
    ``tracking.sinks``. A sink that is asked for but not registered is a
    :class:`ConfigError` naming the key."""
    tracking = cfg.tracking
    asked = {"mlflow": ("tracking.mlflow-uri", tracking.mlflow_uri)} if tracking.mlflow_uri else {}
    if port := cfg.monitoring.prometheus_port:
        asked["prometheus"] = ("monitoring.prometheus-port", port)
    for name in (n.strip() for n in tracking.sinks.split(",")):
        if name:
            asked.setdefault(name, ("tracking.sinks", tracking.sinks))
    hint = (
        "The MLflow and Prometheus sinks are wired by adapters.app (the app's components in "
        "pyproject.toml); in Python, import adapters.app first."
    )
    return [
        SINKS.for_config(name, key=key, value=value, hint=hint)(cfg, run_dir)
        for name, (key, value) in asked.items()
    ]
