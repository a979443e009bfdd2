"""``fedsilo runs list --tracking-uri``: the federations an MLflow server holds, as the
same :class:`fl_app.runs.RunSummary` rows a run directory gives.

One parent run per federation (:class:`adapters.mlflow.sink.MLflowSink`): its params are
the run config, its metrics ``<phase>/<name>`` per round; the silos' nested runs (tag
``mlflow.parentRunId``) are left out.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fl_app.runs import RunSummary, main_metric
from fl_app.sinks import metric_value

__all__ = ["mlflow_runs"]

#: MLflow's run statuses as `fedsilo runs list` words them.
STATUS = {"FINISHED": "finished", "FAILED": "failed", "RUNNING": "running", "KILLED": "killed"}


def mlflow_runs(tracking_uri: str, experiment: str = "fedsilo") -> list[RunSummary]:
    """The federations of ``experiment`` at ``tracking_uri``, newest first."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise LookupError(
                f"no MLflow experiment '{experiment}' at {tracking_uri}; pass --experiment "
                "(the runs' tracking.experiment)"
            )
        runs = client.search_runs(
            [found.experiment_id],
            filter_string="tags.`mlflow.parentRunId` IS NULL",
            order_by=["attributes.start_time DESC"],
        )
    except MlflowException as exc:
        raise LookupError(f"MLflow at {tracking_uri}: {exc.message}") from exc
    out = []
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        task = params.get("task", "?")
        metric = main_metric(task)
        epsilon = metrics.get("train/epsilon")
        value = metrics.get(f"server/{metric}")
        history = client.get_metric_history(run.info.run_id, f"server/{metric}")
        out.append(
            RunSummary(
                name=run.info.run_name or run.info.run_id,
                path=run.info.run_id,
                task=task,
                strategy=params.get("strategy", "?"),
                rounds_planned=int(params.get("num-server-rounds", 0)),
                rounds_done=max((m.step for m in history), default=0),
                metric=metric,
                value=metric_value(value),
                epsilon=metric_value(epsilon),
                status=STATUS.get(run.info.status, run.info.status.lower()),
            )
        )
    return out
