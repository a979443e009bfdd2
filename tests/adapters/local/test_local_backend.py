"""The ``local`` backend's status, logs and cancel on recorded submissions, without running
a federation (test_local_e2e.py runs one through ``fedsilo submit -b local``)."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest
from typer.testing import CliRunner

from adapters.cli import app
from adapters.federation.spec import parse_spec
from adapters.local.backend import LocalBackend, LocalSubmission
from adapters.local.run import LocalFederationError

SPEC = """
name: fed-local
silos: [{name: silo-a}, {name: silo-b}]
task: breast-cancer
"""


@pytest.fixture
def spec():
    return parse_spec(SPEC)


def _record(pid: int, status: str = "running", submission_id: str = "20260101-000000-abcd"):
    record = LocalSubmission(
        "fed-local", submission_id, pid, psutil.Process(pid).create_time(), status=status
    )
    record.save()
    record.log_dir.mkdir(parents=True, exist_ok=True)
    return record


def test_nothing_recorded_says_what_to_do(spec, tmp_path):
    backend = LocalBackend()
    for call in (
        lambda: backend.status(spec, None),
        lambda: backend.logs(spec, None, "serverapp"),
        lambda: backend.cancel(spec, None),
    ):
        with pytest.raises(LocalFederationError, match="`fedsilo submit SPEC --backend local`"):
            call()
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    result = CliRunner().invoke(app, ["status", str(path), "--backend", "local"])
    assert result.exit_code == 1
    assert "no recorded submission of federation 'fed-local'" in result.output + result.stderr


def test_no_wait_is_refused_not_ignored(spec):
    with pytest.raises(LocalFederationError, match="runs the federation in the foreground"):
        LocalBackend().submit(spec, wait=False)


def test_logs_and_status_of_a_finished_run(spec, capsys):
    record = _record(psutil.Process().pid, status="finished:completed")
    (record.log_dir / "flwr-run.log").write_text("round 1 done\n")
    (record.log_dir / "silo-a.log").write_text("silo a here\n")
    backend = LocalBackend()
    assert backend.status(spec, None).statuses == {"federation": "finished:completed"}
    backend.logs(spec, None, "serverapp")
    backend.logs(spec, record.submission_id, "silo-a")
    assert capsys.readouterr().out == "round 1 done\nsilo a here\n"
    with pytest.raises(LocalFederationError, match="no log of 'silo-z'; logs: serverapp, silo-a"):
        backend.logs(spec, None, "silo-z")
    assert backend.cancel(spec, None) == {"federation": "already finished:completed"}


def test_cancel_interrupts_the_process_running_the_submission(spec):
    code = (  # Ctrl-C handling on, as the local backend's submit does: a shell's
        # background job (`pytest … &`) starts with SIGINT ignored
        "import signal, time\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "try:\n print('up', flush=True)\n time.sleep(120)\nexcept KeyboardInterrupt:\n"
        " raise SystemExit(3)"
    )
    runner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert runner.stdout.readline() == "up\n"  # its Ctrl-C handler is in place
    try:
        _record(runner.pid)
        backend = LocalBackend()
        assert backend.status(spec, None).statuses == {"federation": "running"}
        done = backend.cancel(spec, None)
        assert done["federation"].startswith(f"interrupt sent to pid {runner.pid}")
        assert runner.wait(timeout=30) == 3  # it got SIGINT (KeyboardInterrupt)
        # The runner ended without recording an outcome: the run reads as interrupted.
        assert backend.status(spec, None).statuses == {"federation": "interrupted"}
    finally:
        runner.kill()
        runner.wait()  # reaped: no zombie left for the next test's process checks


def test_the_local_backend_does_not_depend_on_azureml():
    code = (
        "import sys\n"
        "import adapters.local.backend, adapters.local.run, adapters.federation.flower\n"
        "loaded = [m for m in sys.modules if m.startswith(('adapters.azureml', 'azure.'))]\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
