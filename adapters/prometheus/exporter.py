"""A metrics sink that serves the running federation to Prometheus.

``monitoring.prometheus-port`` > 0 turns it on (:func:`fl_app.sinks.tracking_sinks`): the
ServerApp then serves ``/metrics`` on that port (``monitoring.prometheus-host``) while
the run lasts. It sees exactly what ``metrics.json``, ``silo_metrics.json`` and MLflow
see — the rows of every round and phase, each silo's own figures, each round's
selection — plus the audit log's events (who was asked and did not answer, who was
retried, whose update was rejected), and keeps the latest of each as a gauge or adds it
to a counter.

Conventions: every name starts with ``fedsilo_``, figures are in base units (seconds,
bytes), counters end in ``_total``, and labels take bounded values only — ``partition``
(the silos of the federation), ``phase`` (a fixed set) and ``metric`` (the task's metric
names). The run's identity (task, strategy, config hash, run directory) is one series,
:data:`fedsilo_run_info`, as one process serves one run. Each run has its own
``CollectorRegistry`` (never the process-global one), and the HTTP server stops when
the run ends: after up to ``monitoring.final-scrape-wait`` seconds for one scrape of
the final figures.

:data:`METRICS` declares every metric once: the sink builds its collectors from it, and
the operations guide's reference table (``python -m adapters.prometheus.exporter``),
the alert rules' and the dashboard's checks read it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from fl_app import LOG, VERSION
from fl_app.sinks import metric_value
from fl_core.errors import ConfigError
from strategies.wrappers import REPLY_SECONDS_KEY

if TYPE_CHECKING:
    from fl_app.config import RunConfig

PREFIX = "fedsilo_"
#: Values of the ``phase`` label of :data:`fedsilo_phase` (one is 1, the others 0).
PHASES = ("starting", "train", "evaluate", "server", "idle", "done", "aborted", "failed")
#: Row keys that have a dedicated metric (not repeated in ``fedsilo_client_metric``).
_DEDICATED = {
    "replies", "failures", "bytes-uploaded", "bytes-downloaded", "bytes-uploaded-dense",
    "rejected-updates", "clipped-updates", "epsilon", "train-seconds", "evaluate-seconds",
    "dp-private", "round-seconds",
}  # fmt: skip


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: its exposed ``name`` (counters with ``_total``), ``kind``
    (``gauge`` or ``counter``), ``labels`` and ``help`` (also the reference's text)."""

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str
    scope: str = "run"  # run | silo (the reference's grouping)


def _g(name: str, labels: tuple[str, ...], text: str, scope: str = "run") -> MetricSpec:
    return MetricSpec(PREFIX + name, "gauge", labels, text, scope)


def _c(name: str, labels: tuple[str, ...], text: str, scope: str = "run") -> MetricSpec:
    return MetricSpec(PREFIX + name + "_total", "counter", labels, text, scope)


S = "silo"
#: Every metric the exporter exposes, in reference order.
METRICS: tuple[MetricSpec, ...] = (
    _g("run_info", ("task", "strategy", "config_hash", "run", "version"),
       "Always 1; the run this process serves (run = its run directory's name)."),
    _g("rounds_planned", (), "num-server-rounds of the run config."),
    _g("round", (), "The round being run (0 before round 1: the initial model's evaluation)."),
    _g("phase", ("phase",), "1 for the phase the run is in, 0 for the others: "
       + ", ".join(PHASES) + "."),
    _g("round_start_timestamp_seconds", (), "Unix time the current round started (selection)."),
    _g("round_deadline_seconds", (),
       "Longest a round may wait for silos: sampling.round-timeout × (2 + "
       "sampling.round-retries) (train with its retries, then evaluate)."),
    _g("round_duration_seconds", (), "Wall time of the last finished round (round-seconds)."),
    _g("phase_duration_seconds", ("phase",),
       "Wall time of the last train / evaluate phase (train-seconds, evaluate-seconds)."),
    _c("rounds_completed", (), "Rounds finished (server evaluation and checkpoint done)."),
    _g("last_checkpoint_round", (), "Round of the last checkpoint written."),
    _g("server_metric", ("metric",),
       "Server-side test metrics of the global model after the last round "
       "(metrics.json, phase server; e.g. accuracy, loss, num-examples)."),
    _g("server_main_metric", (), "The task's main metric on the server's test set."),
    _g("client_metric", ("phase", "metric"),
       "Aggregated silo metrics of the last round (metrics.json, phases train and evaluate; "
       "the evaluate phase's per-silo spread: silo-METRIC-min, -p10, -median, -jain, …)."),
    _g("dp_epsilon", (), "Central DP ε spent so far (0 without central DP)."),
    _g("dp_epsilon_budget", (), "Central DP ε budget, dp.target-epsilon (0 = none)."),
    _c("uploaded_bytes", ("phase",), "Bytes of silo replies as received (bytes-uploaded)."),
    _c("downloaded_bytes", ("phase",), "Bytes of instructions sent (bytes-downloaded)."),
    _c("replies", ("phase",), "Replies without error."),
    _c("failed_replies", ("phase",), "Error replies (failures)."),
    _c("rejected_updates", (), "Train updates rejected by validation (rejected-updates)."),
    _c("clipped_updates", (),
       "Train updates scaled down to robust.max-update-norm-ratio × the cohort median "
       "(robust.norm-outliers = clip; clipped-updates)."),
    _c("oversized_replies", (), "Replies dropped for exceeding robust.max-update-bytes."),
    _c("retries", (), "Re-sends of a round short of sampling.min-train-nodes."),
    _g("silo_last_seen_timestamp_seconds", ("partition",),
       "Unix time of the silo's last successful reply.", S),
    _g("silo_last_seen_round", ("partition",), "Round of the silo's last successful reply.", S),
    _g("silo_missed_rounds", ("partition",),
       "Train rounds in a row the silo was asked and did not answer (0 after an answer).", S),
    _g("silo_reply_seconds", ("partition", "phase"),
       "Seconds from the instruction to the silo's reply, last round (reply-seconds).", S),
    _c("silo_replies", ("partition", "phase"), "The silo's successful replies.", S),
    _c("silo_failures", ("partition", "phase"),
       "Rounds the silo was asked and did not answer in time (error or no reply).", S),
    _c("silo_retries", ("partition",), "Re-sends to the silo (sampling.round-retries).", S),
    _c("silo_rejected_updates", ("partition",),
       "The silo's updates rejected by validation or the payload limit.", S),
    _c("silo_clipped_updates", ("partition",), "The silo's updates clipped by validation.", S),
    _c("silo_uploaded_bytes", ("partition",), "Bytes of the silo's train replies.", S),
    _g("silo_selected", ("partition",), "1 if the silo was chosen for the current round.", S),
    _c("silo_selections", ("partition",), "Rounds the silo was chosen for.", S),
    _g("silo_selection_score", ("partition",),
       "The selection policy's score when it last chose the silo (policies with scores).", S),
    _g("silo_contribution", ("partition", "method"),
       "The silo's contribution score of the last scored round (contribution.method: "
       "method loo = leave-one-out, shapley = GTG-Shapley).", S),
    _g("silo_contribution_sum", ("partition", "method"),
       "The silo's contribution scores summed over the rounds this process scored.", S),
    _g("silo_metric", ("partition", "phase", "metric"),
       "The silo's own reported metrics of the last round (silo_metrics.json; e.g. "
       "train-loss, num-examples, accuracy).", S),
)  # fmt: skip


def exposed_names() -> set[str]:
    """Every sample name the exporter can expose (counters also as ``…_created``)."""
    names = {m.name for m in METRICS}
    names |= {m.name.removesuffix("_total") + "_created" for m in METRICS if m.kind == "counter"}
    return names


def build_collectors(registry: CollectorRegistry) -> dict[str, Gauge | Counter]:
    """The collectors of :data:`METRICS` registered in ``registry``, by exposed name."""
    out: dict[str, Gauge | Counter] = {}
    for spec in METRICS:
        if spec.kind == "counter":
            base = spec.name.removesuffix("_total")
            out[spec.name] = Counter(base, spec.help, spec.labels, registry=registry)
        else:
            out[spec.name] = Gauge(spec.name, spec.help, spec.labels, registry=registry)
    return out


class _ScrapeClock:
    """A collector with no metrics that notes when the registry was last scraped."""

    def __init__(self) -> None:
        self.last = 0.0
        self.event = threading.Event()

    def describe(self):  # no collect() at registration
        return []

    def collect(self):
        self.last = time.time()
        self.event.set()
        return []


class PrometheusSink:
    """Serves the run's figures on ``host:port`` (see module doc)."""

    def __init__(
        self,
        port: int,
        host: str = "0.0.0.0",
        *,
        info: Mapping[str, str] | None = None,
        rounds: int = 0,
        round_deadline: float = 0.0,
        epsilon_budget: float = 0.0,
        main_metric: str = "accuracy",
        final_scrape_wait: float = 15.0,
        start_server: bool = True,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # First in the registry: a scrape notes its start before it reads any metric, so a
        # scrape that started after the last update has read every final figure.
        self.clock = _ScrapeClock()
        self.registry.register(self.clock)
        self.m = build_collectors(self.registry)
        self.main_metric = main_metric
        self.final_scrape_wait = final_scrape_wait
        self.round = 0
        self._phase = ""
        self._updated = 0.0  # time of the last change a scrape should see
        self._lock = threading.Lock()
        if info:
            self.m["fedsilo_run_info"].labels(**dict(info)).set(1)
        self.m["fedsilo_rounds_planned"].set(rounds)
        self.m["fedsilo_round_deadline_seconds"].set(round_deadline)
        self.m["fedsilo_dp_epsilon_budget"].set(epsilon_budget)
        self.m["fedsilo_dp_epsilon"].set(0)
        self.m["fedsilo_round"].set(0)
        for counter in (
            "fedsilo_rejected_updates_total",
            "fedsilo_clipped_updates_total",
            "fedsilo_retries_total",
            "fedsilo_oversized_replies_total",
            "fedsilo_rounds_completed_total",
        ):
            self.m[counter].inc(0)  # present from the start, so rate() sees the first rise
        for phase in ("train", "evaluate"):
            for name in (
                "fedsilo_replies_total",
                "fedsilo_failed_replies_total",
                "fedsilo_uploaded_bytes_total",
                "fedsilo_downloaded_bytes_total",
            ):
                self.m[name].labels(phase=phase).inc(0)  # fmt: skip
        self._set_phase("starting")
        self.server = self.thread = None
        self.address = (host, port)
        if start_server:
            self._serve(host, port)

    # -- the HTTP server -----------------------------------------------------------------
    def _serve(self, host: str, port: int) -> None:
        try:
            self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"run-config 'monitoring.prometheus-port' = {port}: cannot listen on "
                f"{host}:{port} ({exc.strerror or exc}); another process (another run?) "
                "holds it. Choose a free port, or 0 to turn the exporter off."
            ) from None
        self.address = self.server.server_address[:2]
        LOG.info("[fedsilo] Prometheus metrics on http://%s:%d/metrics", host, self.address[1])

    @property
    def port(self) -> int:
        return int(self.address[1])

    def close(self) -> None:
        """Wait (up to ``final_scrape_wait``) for a scrape of the final figures, then stop
        the HTTP server. Idempotent."""
        if self.server is None:
            return
        deadline = time.monotonic() + self.final_scrape_wait
        while self.clock.last <= self._updated and time.monotonic() < deadline:
            self.clock.event.clear()
            self.clock.event.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        self._stop()

    def _stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            if self.thread is not None:
                self.thread.join(timeout=10)

    # -- state ---------------------------------------------------------------------------
    def _touch(self) -> None:
        self._updated = time.time()

    def _set_phase(self, phase: str) -> None:
        if phase == self._phase:
            return
        self._phase = phase
        for name in PHASES:
            self.m["fedsilo_phase"].labels(phase=name).set(float(name == phase))
        self._touch()

    def _begin_round(self, server_round: int) -> None:
        if server_round == self.round and self._phase == "train":
            return
        self.round = server_round
        self.m["fedsilo_round"].set(server_round)
        self.m["fedsilo_round_start_timestamp_seconds"].set(time.time())
        self._set_phase("train")

    # -- MetricsSink -------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: Path) -> None:
        pass

    def log_metrics(self, server_round: int, phase: str, metrics: Mapping[str, float]) -> None:
        with self._lock:
            self._log_metrics(server_round, phase, metrics)
            self._touch()

    def _log_metrics(self, server_round: int, phase: str, metrics: Mapping[str, float]) -> None:
        values = {k: v for k, raw in metrics.items() if (v := metric_value(raw)) is not None}
        m = self.m
        if phase == "server":
            for key, value in values.items():
                if key not in _DEDICATED:
                    m["fedsilo_server_metric"].labels(metric=key).set(value)
            if self.main_metric in values:
                m["fedsilo_server_main_metric"].set(values[self.main_metric])
            if server_round > 0:
                m["fedsilo_rounds_completed_total"].inc()
                if "round-seconds" in values:
                    m["fedsilo_round_duration_seconds"].set(values["round-seconds"])
            else:
                m["fedsilo_round"].set(0)
            self._set_phase("idle")
            return
        if phase not in ("train", "evaluate"):
            return
        counters = {
            "replies": "fedsilo_replies_total",
            "failures": "fedsilo_failed_replies_total",
            "bytes-uploaded": "fedsilo_uploaded_bytes_total",
            "bytes-downloaded": "fedsilo_downloaded_bytes_total",
        }
        for key, name in counters.items():
            if values.get(key, 0) > 0:
                m[name].labels(phase=phase).inc(values[key])
        if values.get("rejected-updates", 0) > 0:
            m["fedsilo_rejected_updates_total"].inc(values["rejected-updates"])
        if values.get("clipped-updates", 0) > 0:
            m["fedsilo_clipped_updates_total"].inc(values["clipped-updates"])
        if "epsilon" in values:
            m["fedsilo_dp_epsilon"].set(values["epsilon"])
        if f"{phase}-seconds" in values:
            m["fedsilo_phase_duration_seconds"].labels(phase=phase).set(values[f"{phase}-seconds"])
        for key, value in values.items():
            if key not in _DEDICATED:
                m["fedsilo_client_metric"].labels(phase=phase, metric=key).set(value)
        self._set_phase("evaluate" if phase == "train" else "server")

    def log_silo_metrics(
        self, server_round: int, phase: str, partition_id: int, metrics: Mapping[str, float]
    ) -> None:
        with self._lock:
            self._log_silo(server_round, phase, str(partition_id), metrics)
            self._touch()

    def _log_silo(self, server_round: int, phase: str, pid: str, metrics) -> None:
        values = {k: v for k, raw in metrics.items() if (v := metric_value(raw)) is not None}
        m = self.m
        if phase == "selection":
            self._begin_round(server_round)
            selected = values.get("selected", 0.0)
            m["fedsilo_silo_selected"].labels(partition=pid).set(selected)
            m["fedsilo_silo_selections_total"].labels(partition=pid).inc(selected > 0)
            if "selection-score" in values:
                m["fedsilo_silo_selection_score"].labels(partition=pid).set(
                    values["selection-score"]
                )
            return
        if phase == "contribution":  # fl_app.contribution: one score per method
            for method, score in values.items():
                m["fedsilo_silo_contribution"].labels(partition=pid, method=method).set(score)
                m["fedsilo_silo_contribution_sum"].labels(partition=pid, method=method).inc(score)
            return
        if phase not in ("train", "evaluate"):  # not a reply of the silo
            return
        m["fedsilo_silo_last_seen_timestamp_seconds"].labels(partition=pid).set(time.time())
        m["fedsilo_silo_last_seen_round"].labels(partition=pid).set(server_round)
        m["fedsilo_silo_replies_total"].labels(partition=pid, phase=phase).inc()
        if REPLY_SECONDS_KEY in values:
            m["fedsilo_silo_reply_seconds"].labels(partition=pid, phase=phase).set(
                values[REPLY_SECONDS_KEY]
            )
        for key, value in values.items():
            if key != REPLY_SECONDS_KEY:
                m["fedsilo_silo_metric"].labels(partition=pid, phase=phase, metric=key).set(value)

    # -- audit events (fl_app.sinks.EventSink) -----------------------------------------
    def log_event(self, entry: Mapping[str, Any]) -> None:
        with self._lock:
            self._log_event(entry)
            self._touch()
        if entry.get("event") == "run-failed":  # no close() follows a crash
            self._stop()

    def _log_event(self, entry: Mapping[str, Any]) -> None:
        event, m = entry.get("event"), self.m
        if event == "run-start":
            done = int(entry.get("resumed-after-round") or 0)
            self.round = done
            m["fedsilo_round"].set(done)
        elif event == "checkpoint":
            m["fedsilo_last_checkpoint_round"].set(int(entry.get("round", 0)))
        elif event in ("train", "evaluate"):
            self._phase_audit(event, entry)
        elif event == "run-end":
            self._set_phase("done")
        elif event == "run-aborted":
            self._set_phase("aborted")
        elif event == "run-failed":
            self._set_phase("failed")

    def _phase_audit(self, phase: str, entry: Mapping[str, Any]) -> None:
        m = self.m

        def pid(item: Mapping[str, Any]) -> str:
            p = item.get("partition-id")
            return str(p) if p is not None else "unknown"

        missing = {pid(s) for s in entry.get("missing", [])}
        for p in missing:
            m["fedsilo_silo_failures_total"].labels(partition=p, phase=phase).inc()
        oversized = entry.get("oversized", [])
        if oversized:
            m["fedsilo_oversized_replies_total"].inc(len(oversized))
        if phase != "train":
            return
        for silo in entry.get("sampled", []):
            gauge = m["fedsilo_silo_missed_rounds"].labels(partition=pid(silo))
            if pid(silo) in missing:
                gauge.inc()
            else:
                gauge.set(0)
        if entry.get("retries"):
            m["fedsilo_retries_total"].inc(int(entry["retries"]))
        for silo in entry.get("retried", []):
            m["fedsilo_silo_retries_total"].labels(partition=pid(silo)).inc()
        for silo in [*entry.get("rejected", []), *oversized]:
            m["fedsilo_silo_rejected_updates_total"].labels(partition=pid(silo)).inc()
        for silo in entry.get("clipped", []):
            m["fedsilo_silo_clipped_updates_total"].labels(partition=pid(silo)).inc()
        for update in entry.get("updates", []):
            if isinstance(update.get("bytes"), int):
                m["fedsilo_silo_uploaded_bytes_total"].labels(partition=pid(update)).inc(
                    update["bytes"]
                )


def sink_from_config(cfg: RunConfig, run_dir: Path) -> PrometheusSink:
    """The ``prometheus`` sink of :data:`fl_app.sinks.SINKS`, from the run config."""
    from tasks import get_task

    return PrometheusSink(
        cfg.monitoring.prometheus_port,
        cfg.monitoring.prometheus_host,
        info={
            "task": cfg.task,
            "strategy": cfg.strategy,
            "config_hash": cfg.fingerprint(),
            "run": Path(run_dir).name,
            "version": VERSION,
        },
        rounds=cfg.num_server_rounds,
        round_deadline=cfg.sampling.round_timeout * (2 + cfg.sampling.round_retries),
        epsilon_budget=cfg.dp.target_epsilon if cfg.dp.central else 0.0,
        main_metric=get_task(cfg.task).main_metric,
        final_scrape_wait=cfg.monitoring.final_scrape_wait,
    )


def reference_table() -> str:
    """The metrics reference of docs/operations.md (Markdown), from :data:`METRICS`."""
    lines = []
    for scope, title in (("run", "Run-level"), ("silo", "Per silo")):
        lines += [f"**{title}**", "", "| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
        for spec in METRICS:
            if spec.scope == scope:
                labels = ", ".join(f"`{label}`" for label in spec.labels) or "—"
                lines.append(f"| `{spec.name}` | {spec.kind} | {labels} | {spec.help} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


DOC_START = "<!-- metrics-reference:start (generated: python -m adapters.prometheus.exporter) -->"
DOC_END = "<!-- metrics-reference:end -->"


def update_doc(path: str | Path = "docs/operations.md") -> bool:
    """Rewrite the reference between the markers of ``path``; return whether it changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if DOC_START not in text or DOC_END not in text:
        raise ValueError(f"{path} lacks the metrics-reference markers; restore them first")
    head, rest = text.split(DOC_START, 1)
    _, tail = rest.split(DOC_END, 1)
    new = f"{head}{DOC_START}\n{reference_table()}{DOC_END}{tail}"
    path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    update_doc(Path(__file__).resolve().parents[2] / "docs" / "operations.md")
