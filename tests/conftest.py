"""Shared test setup: offline MLflow, a Flower task identity for building Messages, and a
metrics sink that snapshots a run mid-way (to resume it)."""

import os
import shutil

import pytest

from fl_app.messages import offline_identity, train_reply

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture
def flower_identity():
    """Message objects need a run/node/task identity outside a running app."""
    offline_identity()


@pytest.fixture
def make_reply(flower_identity):
    """Factory for real train reply Messages (:func:`fl_app.messages.train_reply`)."""
    return train_reply


@pytest.fixture(autouse=True)
def _private_silo_state_dir(tmp_path_factory, monkeypatch):
    """Each test's silos keep their secret state (local-DP generators and accountant) in a
    directory of their own, never in the home directory of whoever runs the tests.
    Subprocesses started by a test (flwr run, SuperNodes) inherit it."""
    monkeypatch.setenv("FEDSILO_SILO_STATE_DIR", str(tmp_path_factory.mktemp("silo-state")))


@pytest.fixture
def one_torch_thread():
    """Tiny models, as in the ClientApp: torch's thread pool only adds contention on a shared
    2-core machine. ``pytestmark = pytest.mark.usefixtures("one_torch_thread")`` in a module."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


class _SnapshotAfterRound:
    """A metrics sink that copies the only run directory under ``runs`` to ``snapshot``
    once round ``server_round`` is checkpointed (its ``server`` row)."""

    def __init__(self, runs, snapshot, server_round: int = 2) -> None:
        self.runs, self.snapshot, self.server_round = runs, snapshot, server_round

    def log_metrics(self, server_round, phase, metrics) -> None:
        if (server_round, phase) == (self.server_round, "server"):
            shutil.copytree(next(self.runs.iterdir()), self.snapshot)

    def log_params(self, params) -> None:
        pass

    def log_silo_metrics(self, *args) -> None:
        pass

    def log_artifact(self, path) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def snapshot_sink():
    """``snapshot_sink(runs, snapshot, server_round=2)``: a sink that copies the run
    directory under ``runs`` to ``snapshot`` after that round, for a resume test."""
    return _SnapshotAfterRound
