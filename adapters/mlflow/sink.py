"""A metrics sink that tracks a federation in MLflow.

One parent run per federation holds the resolved run config as params and, per round
(``step = server_round``), the server-side test metrics (``server/…``), the aggregated
client metrics (``train/…``, ``evaluate/…`` — including ``epsilon`` when DP is on and
``rejected-updates`` when validation rejects updates). One nested run per silo
(``silo-<partition id>``) holds that silo's own metrics per round. At the end the run's
files are logged as artefacts and the final model as an MLflow PyTorch model, optionally
registered in the model registry.

Works with any tracking URI MLflow understands: a directory or ``file:`` URI, ``sqlite:``,
an ``http(s)://`` tracking server, or an AzureML workspace's MLflow URI (``azureml://…``,
which needs the ``azureml-mlflow`` plugin installed).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

LOG = logging.getLogger(__name__)
if TYPE_CHECKING:
    from fl_app.config import RunConfig

_PARAM_LIMIT = 100  # MLflow's log_batch limit on params per call


class MlflowUnavailableError(RuntimeError):
    """The tracking server cannot be reached or refuses the request."""


def _probe(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail fast (instead of MLflow's minutes of retries) when an HTTP tracking server
    does not answer its health check."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout):
            return
    except OSError as exc:
        raise MlflowUnavailableError(
            f"MLflow tracking server '{tracking_uri}' does not answer ({exc}); start it or fix "
            "'tracking.mlflow-uri' in the run config (\"\" runs without tracking)"
        ) from exc


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }


class MlflowSink:
    """Tracks one federation in MLflow (see module doc)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "fedsilo",
        run_name: str | None = None,
        register_model_as: str = "",
    ) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.register_model_as = register_model_as
        self._params: dict[str, Any] = {}
        _probe(tracking_uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = (
                found.experiment_id if found else self.client.create_experiment(experiment)
            )
            self.parent = self.client.create_run(experiment_id, run_name=run_name)
        except (MlflowException, OSError) as exc:
            raise MlflowUnavailableError(
                f"MLflow tracking at '{tracking_uri}' is unavailable ({exc}); check "
                "'tracking.mlflow-uri' in the run config (or set it to \"\" to run without "
                "tracking)"
            ) from exc
        self.experiment_id = experiment_id
        self.run_id = self.parent.info.run_id
        self.silo_runs: dict[int, str] = {}
        LOG.info("MLflow run %s in experiment '%s' at %s", self.run_id, experiment, tracking_uri)

    # --- MetricsSink ---------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        self._params = dict(params)
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), _PARAM_LIMIT):
            self.client.log_batch(self.run_id, params=items[i : i + _PARAM_LIMIT])

    def log_metrics(self, server_round: int, phase: str, metrics: Mapping[str, float]) -> None:
        self._log(self.run_id, server_round, {f"{phase}/{k}": v for k, v in metrics.items()})

    def log_silo_metrics(
        self, server_round: int, phase: str, partition_id: int, metrics: Mapping[str, float]
    ) -> None:
        run_id = self.silo_runs.get(partition_id)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"silo-{partition_id}",
                tags={"mlflow.parentRunId": self.run_id, "partition-id": str(partition_id)},
            )
            run_id = self.silo_runs[partition_id] = run.info.run_id
        self._log(run_id, server_round, {f"{phase}/{k}": v for k, v in metrics.items()})

    def log_artifact(self, path: Path) -> None:
        path = Path(path)
        if path.suffix == ".pt":
            self._log_model(path)
        self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        for run_id in [*self.silo_runs.values(), self.run_id]:
            self.client.set_terminated(run_id, "FINISHED")

    # --- helpers -------------------------------------------------------------------
    def _log(self, run_id: str, step: int, metrics: Mapping[str, Any]) -> None:
        values = _finite(metrics)
        if values:
            stamp = int(1000 * time.time())
            self.client.log_batch(
                run_id, metrics=[Metric(k, v, stamp, step) for k, v in values.items()]
            )

    def _log_model(self, state_dict_path: Path) -> None:
        """Log the final model (the task's architecture with the saved weights) as an MLflow
        PyTorch model, and register it if asked."""
        import torch

        from fl_app.config import RunConfig
        from tasks import get_task

        cfg = RunConfig.from_flower({k: v for k, v in self._params.items() if k != "config-hash"})
        task = get_task(cfg.task)
        model = task.build_model()
        model.load_state_dict(torch.load(state_dict_path))
        model.eval()
        mlflow.set_tracking_uri(self.tracking_uri)
        with mlflow.start_run(run_id=self.run_id):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                input_example=task.load_test(cfg.data, cfg.seed).x[:2],
                registered_model_name=self.register_model_as or None,
            )
        LOG.info("MLflow model logged: %s", info.model_uri)


def sink_from_config(cfg: RunConfig, run_dir: Path) -> MlflowSink:
    """The ``mlflow`` metrics sink of :data:`fl_app.sinks.SINKS`: tracks the run under
    ``tracking.mlflow-uri`` and ``tracking.experiment``, named after its run directory."""
    return MlflowSink(
        cfg.tracking.mlflow_uri,
        experiment=cfg.tracking.experiment,
        run_name=run_dir.name,
        register_model_as=cfg.tracking.register_model,
    )
