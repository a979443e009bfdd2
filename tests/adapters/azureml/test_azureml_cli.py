"""The ``fedsilo`` CLI through typer's CliRunner: validate, render, and clear errors."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
from azure.ai.ml import load_job
from azureml_testkit import EXAMPLE, REPO_ROOT
from typer.testing import CliRunner

from adapters.cli import app

runner = CliRunner()


def _run(*args: str):
    result = runner.invoke(app, list(args))
    return result, result.output + (result.stderr if result.stderr_bytes else "")


def test_version_is_the_installed_packages():
    result, out = _run("--version")
    assert result.exit_code == 0
    assert out.strip() == f"fedsilo {importlib.metadata.version('fedsilo')}"


def test_validate_the_example():
    result, out = _run("validate", str(EXAMPLE))
    assert result.exit_code == 0, out
    assert "is valid" in out
    for silo in ("hospital-a", "hospital-b", "hospital-c"):
        assert silo in out
    assert "task=digits strategy=fedavg rounds=5 network=azureml-job" in out


def test_validate_a_bad_spec_names_the_field_without_a_traceback(write_spec):
    path = write_spec(run_config="run_config: {num-server-round: 3}")
    result, out = _run("validate", str(path))
    assert result.exit_code == 2
    assert "unknown run-config key 'num-server-round'" in out
    assert "Did you mean 'num-server-rounds'?" in out
    assert "Traceback" not in out

    result, out = _run("validate", str(path.with_name("missing.yaml")))
    assert result.exit_code == 2 and "does not exist" in out


def test_render_writes_loadable_job_yamls(tmp_path):
    out_dir = tmp_path / "jobs"
    result, out = _run("render", str(EXAMPLE), "--out", str(out_dir), "--submission", "s-1")
    assert result.exit_code == 0, out
    assert "superlink.yml" in out and "submit.sh" in out
    job = load_job(out_dir / "silo-hospital-b.yml")
    assert job.name == "fedsilo-digits-s-1-silo-hospital-b"
    assert job.compute == "cpu-silo-b"
    assert job.inputs["silo_data"].path == "https://sthospitalb.blob.core.windows.net/digits/train/"
    assert (out_dir / "environment.yml").is_file()


def test_submit_without_azure_credentials_says_az_login(monkeypatch, tmp_path):
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET",
                 "AZURE_FEDERATED_TOKEN_FILE", "MSI_ENDPOINT", "IDENTITY_ENDPOINT",
                 "AZURE_TOKEN_CREDENTIALS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))  # no cached login
    result, out = _run("submit", str(EXAMPLE), "--no-wait")
    assert result.exit_code == 1
    assert "`az login`" in out and "AZURE_CLIENT_SECRET" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("command", ["status", "logs", "cancel"])
def test_watching_before_submitting_explains_what_to_do(command):
    result, out = _run(command, str(EXAMPLE))
    assert result.exit_code == 1
    assert "no recorded submission of federation 'fedsilo-digits'" in out
    assert "`fedsilo submit SPEC` first" in out


def test_the_module_runs_as_a_program():
    proc = subprocess.run(
        [sys.executable, "-m", "adapters.cli", "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for command in ("validate", "render", "submit", "status", "logs", "cancel"):
        assert command in proc.stdout
