"""MLflow tracking for federated runs: :class:`MlflowSink`."""

from adapters.mlflow.sink import MlflowSink, MlflowUnavailableError

__all__ = ["MlflowSink", "MlflowUnavailableError"]
