"""The launch-backend registry (adapters/backends.py) and the ``fedsilo`` CLI's dispatch
through it: unknown names list the known ones, a package's ``fedsilo.backends`` entry point
is discovered, and a backend registered here is driven by submit / status / logs / cancel
without the CLI knowing it."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from adapters import backends
from adapters.backends import (
    ENTRY_POINT_GROUP,
    Backend,
    BackendError,
    Submission,
    backend_names,
    get_backend,
    register_backend,
)
from adapters.cli import app
from adapters.federation.spec import FederationSpec

LOCAL_SPEC = """
name: fed-test
silos: [{name: silo-a}, {name: silo-b}]
task: breast-cancer
run_config: {num-server-rounds: 2}
"""


@pytest.fixture(autouse=True)
def _registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Each test gets its own copy of the registry (built-ins loaded) and state dir."""
    backend_names()  # load the built-ins and the installed entry points
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    monkeypatch.setenv("FEDSILO_STATE_DIR", str(tmp_path / "state"))


def _output(result) -> str:
    return result.output + (result.stderr if result.stderr_bytes else "")


def test_the_built_in_backends_are_registered_and_follow_the_protocol():
    assert {"azureml", "local"} <= set(backend_names())
    for name in ("azureml", "local"):
        assert isinstance(get_backend(name), Backend)


def test_an_unknown_backend_names_the_known_ones():
    with pytest.raises(BackendError) as info:
        get_backend("kubernetes")
    message = str(info.value)
    assert "unknown backend 'kubernetes'" in message
    assert "azureml" in message and "local" in message and ENTRY_POINT_GROUP in message

    result = CliRunner().invoke(app, ["submit", "spec.yaml", "--backend", "kubernetes"])
    assert result.exit_code == 2
    assert "choose one of" in _output(result) and "local" in _output(result)


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="backend 'local' is already registered"):
        register_backend("local")(type("Other", (), {}))


def test_a_package_adds_a_backend_through_an_entry_point(monkeypatch, tmp_path):
    package = tmp_path / "plugin"
    package.mkdir()
    (package / "my_cluster_backend.py").write_text(
        textwrap.dedent(
            '''
            from adapters.backends import Submission
            from adapters.federation.spec import FederationSpec

            class MyClusterBackend:
                """Jobs on my cluster."""

                spec_model = FederationSpec

                def submit(self, spec, *, wait=True, run_dir=None, on_event=None, poll=30.0):
                    return Submission("my-cluster", spec.name, "s-1", ok=True)

                def status(self, spec, submission):
                    return Submission("my-cluster", spec.name, "s-1", statuses={"all": "ok"})

                def logs(self, spec, submission, job):
                    print("log of", job)

                def cancel(self, spec, submission):
                    return {}
            '''
        )
    )
    monkeypatch.syspath_prepend(str(package))
    entry = EntryPoint("my-cluster", "my_cluster_backend:MyClusterBackend", ENTRY_POINT_GROUP)
    broken = EntryPoint("broken", "no_such_module_here:Backend", ENTRY_POINT_GROUP)

    def fake_entry_points(*, group: str):
        return [entry, broken] if group == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(backends, "entry_points", fake_entry_points)
    monkeypatch.setattr(backends, "_loaded", False)
    assert "my-cluster" in backend_names()
    assert "broken" not in backend_names()  # a broken plugin is skipped (and logged)
    found = get_backend("my-cluster")
    assert type(found).__name__ == "MyClusterBackend" and isinstance(found, Backend)
    sys.modules.pop("my_cluster_backend", None)


class _Recording:
    """A backend defined in the test: records what the CLI asks of it."""

    spec_model = FederationSpec
    calls: ClassVar[list[tuple]] = []

    def submit(self, spec, *, wait=True, run_dir=None, on_event=None, poll=30.0):
        self.calls.append(("submit", type(spec), spec.name, wait, run_dir, poll))
        on_event("step one")
        ok = spec.run_config.get("num-server-rounds") == 2
        return Submission(
            "recording", spec.name, "r-1", ok=ok, summary=["summary line"], error="it broke"
        )

    def status(self, spec, submission):
        self.calls.append(("status", submission))
        return Submission("recording", spec.name, "r-1", statuses={"server": "Running"})

    def logs(self, spec, submission, job):
        self.calls.append(("logs", submission, job))
        print(f"the log of {job}")

    def cancel(self, spec, submission):
        self.calls.append(("cancel", submission))
        return {"server": "stopped"}


def test_the_cli_drives_a_backend_registered_in_the_test(tmp_path):
    register_backend("recording")(_Recording)
    _Recording.calls = []
    spec = tmp_path / "federation.yaml"
    spec.write_text(LOCAL_SPEC)
    runner = CliRunner()

    result = runner.invoke(app, ["submit", str(spec), "-b", "recording", "--run-dir", "out"])
    assert result.exit_code == 0, _output(result)
    assert "step one" in result.output and "summary line" in result.output
    assert "federation run completed" in result.output
    assert _Recording.calls[-1] == ("submit", FederationSpec, "fed-test", True, Path("out"), 30.0)

    result = runner.invoke(app, ["status", str(spec), "-b", "recording", "--submission", "r-1"])
    assert result.exit_code == 0 and "r-1" in result.output and "Running" in result.output
    result = runner.invoke(app, ["logs", str(spec), "-b", "recording", "--job", "silo-a"])
    assert result.exit_code == 0 and "the log of silo-a" in result.output
    result = runner.invoke(app, ["cancel", str(spec), "-b", "recording"])
    assert result.exit_code == 0 and "stopped" in result.output
    assert [c[0] for c in _Recording.calls] == ["submit", "status", "logs", "cancel"]
    assert _Recording.calls[1:] == [("status", "r-1"), ("logs", None, "silo-a"), ("cancel", None)]

    spec.write_text(LOCAL_SPEC.replace("num-server-rounds: 2", "num-server-rounds: 3"))
    result = runner.invoke(app, ["submit", str(spec), "-b", "recording"])
    assert result.exit_code == 1 and "it broke" in _output(result)

    listed = runner.invoke(app, ["backends"])
    assert listed.exit_code == 0
    assert "recording" in listed.output and "records what the CLI asks" in listed.output


def test_the_cli_reports_a_backend_error_without_a_traceback(tmp_path):
    class Failing(_Recording):
        def submit(self, spec, **kwargs):
            raise BackendError("the cluster is down; try later")

    register_backend("failing")(Failing)
    spec = tmp_path / "federation.yaml"
    spec.write_text(LOCAL_SPEC)
    result = CliRunner().invoke(app, ["submit", str(spec), "-b", "failing"])
    assert result.exit_code == 1
    assert "the cluster is down; try later" in _output(result)
    assert "Traceback" not in _output(result)
