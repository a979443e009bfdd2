"""A metrics sink that tracks a federation in MLflow.

One parent run per federation holds the resolved run config as params and, per round
(``step = server_round``), the server-side test metrics (``server/…``), the aggregated
client metrics (``train/…``, ``evaluate/…`` — including ``epsilon`` when DP is on and
``rejected-updates`` when validation rejects updates). One nested run per silo
(``silo-<partition id>``) holds that silo's own metrics per round. At the end the run's
files are logged as artefacts and the final model as an MLflow PyTorch model (with
``export.onnx``, also as an MLflow ONNX model ``onnx-model``), registered in the model
registry and promoted to ``champion`` only if it beats the champion (adapters/mlflow/registry.py).

Works with any tracking URI MLflow understands: a directory or ``file:`` URI, ``sqlite:``,
an ``http(s)://`` tracking server, or an AzureML workspace's MLflow URI (``azureml://…``,
which needs the ``azureml-mlflow`` plugin installed).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
from mlflow.entities import Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from adapters.mlflow.registry import promote_if_better, record_decision
from fl_app.audit import AUDIT_FILE, AuditLog
from fl_app.onnx_export import MODEL_FILE as ONNX_MODEL_FILE
from fl_app.onnx_export import ONNX_DIR

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
        audit_path: Path | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.audit_path = audit_path  # the run's audit log: the registry decision goes there
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
        elif path.name == ONNX_MODEL_FILE:
            self._log_onnx_model(path)
        # The ONNX export's files keep their folder (onnx/parity.json, …).
        folder = ONNX_DIR if path.parent.name == ONNX_DIR else None
        self.client.log_artifact(self.run_id, str(path), folder)

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

    def _config(self) -> RunConfig:
        from fl_app.onnx_export import run_config_of

        return run_config_of(self._params)

    def _log_model(self, state_dict_path: Path) -> None:
        """Log the final model (the task's architecture with the saved weights) as an MLflow
        PyTorch model; register it if asked and decide whether it becomes the champion
        (:mod:`adapters.mlflow.registry`)."""
        import torch

        from tasks import get_task

        cfg = self._config()
        task = get_task(cfg.task)
        model = task.build_model()
        model.load_state_dict(torch.load(state_dict_path))
        model.eval()
        test = task.load_test(cfg.data, cfg.seed)
        mlflow.set_tracking_uri(self.tracking_uri)
        with mlflow.start_run(run_id=self.run_id):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                input_example=test.x[:2],
                # The flavour's own list: MLflow's inference runs the model in a
                # subprocess to see what it imports (~15 s a run) and finds torch anyway.
                pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
            )
        LOG.info("MLflow model logged: %s", info.model_uri)
        if not self.register_model_as:
            return
        audit = AuditLog(self.audit_path, cfg.fingerprint()) if self.audit_path else None
        try:
            version = mlflow.register_model(info.model_uri, self.register_model_as)
            decision = promote_if_better(
                self.client,
                self.register_model_as,
                str(version.version),
                task.main_metric,
                task.evaluate(model, test)[task.main_metric],
                lambda champion: self._score_champion(champion, task, test),
            )
            record_decision(self.client, self.run_id, decision)
        except (MlflowException, OSError) as exc:  # e.g. a registry without aliases
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            LOG.error(
                "MLflow registry: model not registered/promoted (%s); the run's model is "
                'logged; set tracking.register-model = "" to skip the registry',
                reason,
            )
            if audit is not None:
                audit.record("model-registry", model=self.register_model_as, error=reason)
            return
        if audit is not None:
            audit.record("model-registry", **decision.audit_fields())
        LOG.info("MLflow registry: %s", decision.reason)

    def _score_champion(self, champion: ModelVersion, task, test) -> float:
        """The champion's weights (its run's model.pt) in its task's architecture, scored
        on this run's test set by this run's task. (Its logged MLflow model is a
        torch.export program traced with a fixed batch, not a module a task evaluates.)"""
        import torch

        from tasks import get_task

        champion_task = get_task(self.client.get_run(champion.run_id).data.params["task"])
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(
                run_id=champion.run_id,
                artifact_path="model.pt",
                dst_path=tmp,
                tracking_uri=self.tracking_uri,
            )
            weights = torch.load(path)
        incumbent = champion_task.build_model()
        incumbent.load_state_dict(weights)
        return task.evaluate(incumbent, test)[task.main_metric]

    def _log_onnx_model(self, path: Path) -> None:
        """Log the exported ONNX model (fl_app.onnx_export) as an MLflow ONNX model,
        ``onnx-model`` beside the PyTorch ``model``."""
        import onnx

        cfg = self._config()
        from tasks import get_task

        example = get_task(cfg.task).load_test(cfg.data, cfg.seed).x[:2]
        mlflow.set_tracking_uri(self.tracking_uri)
        with mlflow.start_run(run_id=self.run_id):
            info = mlflow.onnx.log_model(
                onnx.load(str(path)),
                name="onnx-model",
                input_example=example,
                pip_requirements=mlflow.onnx.get_default_pip_requirements(),
            )
        LOG.info("MLflow ONNX model logged: %s", info.model_uri)


def registered_name(cfg: RunConfig) -> str:
    """The registry name of ``tracking.register-model`` (``auto`` = ``fedsilo-<task>``,
    ``""`` = do not register)."""
    name = cfg.tracking.register_model
    return f"fedsilo-{cfg.task}" if name == "auto" else name


def sink_from_config(cfg: RunConfig, run_dir: Path) -> MlflowSink:
    """The ``mlflow`` metrics sink of :data:`fl_app.sinks.SINKS`: tracks the run under
    ``tracking.mlflow-uri`` and ``tracking.experiment``, named after its run directory;
    registers the final model under :func:`registered_name` and audits the champion
    decision in the run's audit log."""
    return MlflowSink(
        cfg.tracking.mlflow_uri,
        experiment=cfg.tracking.experiment,
        run_name=run_dir.name,
        register_model_as=registered_name(cfg),
        audit_path=run_dir / AUDIT_FILE,
    )
