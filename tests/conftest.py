"""Shared test setup: offline MLflow, and a Flower task identity for building Messages."""

import os

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
