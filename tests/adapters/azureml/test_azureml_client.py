"""``submit`` / ``status`` / ``cancel`` through a real ``MLClient``: a fake token credential
and a recording azure-core transport stand in for Azure; everything between (the SDK's
validation, id resolution, REST serialisation, azure-core pipeline) is the real code."""

from __future__ import annotations

import re

import pytest
from azureml_testkit import (
    RESOURCE_GROUP,
    SUBSCRIPTION,
    WORKSPACE,
    RecordingTransport,
    orchestrator_block,
)
from typer.testing import CliRunner

from adapters import backends
from adapters.azureml.backend import AzureMLBackend
from adapters.azureml.client import (
    NO_CREDENTIALS_HINT,
    AzureMLAuthError,
    AzureMLClient,
    AzureMLError,
    load_submission,
)
from adapters.azureml.jobs import build_environment
from adapters.azureml.spec import load_spec
from adapters.cli import app

ARM_WS = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)
CODE_ASSET = "azureml:fedsilo-app:3"  # a registered code asset: no upload to blob storage


def _client(spec, credential, transport):
    return AzureMLClient(
        spec, credential, transport=transport, enable_telemetry=False, show_progress=False
    )


@pytest.fixture
def spec(write_spec):
    return load_spec(
        write_spec(
            orchestrator=orchestrator_block(
                f"'{CODE_ASSET}'", "identity_client_id: 99999999-0000-0000-0000-000000000000"
            )
        )
    )


def test_submit_registers_the_environment_then_puts_every_job(spec, credential, transport):
    submission = _client(spec, credential, transport).submit(submission_id="20260101-000000-beef")
    env = build_environment(spec)
    prefix = f"{spec.name}-20260101-000000-beef"

    calls = [(r.method, r.path) for r in transport.requests]
    assert calls == [
        ("PUT", f"{ARM_WS}/environments/{env.name}/versions/{env.version}"),
        ("PUT", f"{ARM_WS}/jobs/{prefix}-superlink"),
        ("PUT", f"{ARM_WS}/jobs/{prefix}-silo-hospital-a"),
        ("PUT", f"{ARM_WS}/jobs/{prefix}-silo-hospital-b"),
        ("PUT", f"{ARM_WS}/jobs/{prefix}-silo-hospital-c"),
        ("PUT", f"{ARM_WS}/jobs/{prefix}-serverapp"),
    ]
    # Every request carries the credential's bearer token to ARM.
    for rec in transport.requests:
        assert rec.url.startswith("https://management.azure.com/subscriptions/")
        assert rec.headers["Authorization"] == "Bearer fake-token"
    assert ("https://management.azure.com/.default",) in credential.scopes

    # The environment the SDK serialised: the image and the conda file from pyproject.toml.
    env_body = transport.requests[0].body["properties"]
    assert env_body["image"] == spec.orchestrator.environment.image
    assert "torch>=2.2" in env_body["condaFile"] and "flwr[simulation]" in env_body["condaFile"]

    bodies = {r.path.rsplit("/", 1)[-1]: r.body["properties"] for r in transport.requests[1:]}
    env_id = f"{ARM_WS}/environments/{env.name}/versions/{env.version}"
    code_id = f"{ARM_WS}/codes/fedsilo-app/versions/3"
    for props in bodies.values():
        assert props["jobType"] == "Command"
        assert props["environmentId"] == env_id
        assert props["codeId"] == code_id
        assert props["experimentName"] == spec.name
        assert props["environmentVariables"]["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
        assert props["tags"]["fedsilo.submission"] == "20260101-000000-beef"

    superlink = bodies[f"{prefix}-superlink"]
    assert superlink["computeId"] == f"{ARM_WS}/computes/cpu-orchestrator"
    assert (
        "flower-superlink --insecure --disable-runtime-dependency-installation"
        in (superlink["command"])
    )
    assert "--port 9091" in superlink["command"]
    assert superlink["identity"] == {
        "identityType": "Managed", "clientId": "99999999-0000-0000-0000-000000000000"
    }  # fmt: skip

    silo_a = bodies[f"{prefix}-silo-hospital-a"]
    assert silo_a["computeId"] == f"{ARM_WS}/computes/cpu-silo-a"
    # The default SuperNode is the warm one (adapters.supernode), supervised by the runtime.
    assert silo_a["command"].startswith(
        "python -m adapters.azureml.runtime supernode "
        f"--superlink-job {prefix}-superlink --timeout 1800 --restart-max-delay 60 -- "
        "python -m adapters.supernode run --app fl_app.client_app -- --insecure "
    )
    assert (
        "--node-config 'partition-id=0 num-partitions=3 data-source=\"${{inputs.silo_data}}\"'"
        in silo_a["command"]
    )
    assert silo_a["inputs"] == {
        "silo_data": {
            "jobInputType": "uri_folder",
            "uri": "azureml://datastores/hospital_a/paths/digits/",
            "mode": "ReadOnlyMount",
        }
    }
    assert silo_a["identity"]["clientId"] == "11111111-0000-0000-0000-000000000000"
    assert silo_a["environmentVariables"]["FEDSILO_SILO"] == "hospital-a"

    silo_b = bodies[f"{prefix}-silo-hospital-b"]
    assert silo_b["computeId"] == f"{ARM_WS}/computes/cpu-silo-b"
    assert silo_b["inputs"]["silo_data"]["uri"] == (
        "https://sthospitalb.blob.core.windows.net/digits/train/"
    )
    assert "identity" not in silo_b or silo_b["identity"] is None
    silo_c = bodies[f"{prefix}-silo-hospital-c"]
    assert silo_c["inputs"]["silo_data"]["jobInputType"] == "uri_file"
    assert "partition-id=2 num-partitions=3" in silo_c["command"]

    serverapp = bodies[f"{prefix}-serverapp"]
    assert serverapp["computeId"] == f"{ARM_WS}/computes/cpu-orchestrator"
    assert "-- flwr run . fedsilo --stream --run-config" in serverapp["command"]
    assert 'task="breast-cancer" strategy="fedavg" num-server-rounds=2' in serverapp["command"]
    assert (
        "training.learning-rate=1.0" in serverapp["command"]
    )  # YAML's 1 reaches Flower as a float

    # The submission is recorded with the names and Studio links Azure answered.
    assert [j.role for j in submission.jobs] == [
        "superlink", "silo:hospital-a", "silo:hospital-b", "silo:hospital-c", "serverapp"
    ]  # fmt: skip
    assert submission.job("hospital-b").studio_url == (
        f"https://ml.azure.com/runs/{prefix}-silo-hospital-b"
    )
    assert load_submission(spec.name) == submission


def test_status_and_cancel_use_the_recorded_job_names(spec, credential, transport):
    client = _client(spec, credential, transport)
    submission = client.submit(submission_id="20260101-000000-0001")
    transport.requests.clear()
    transport.job_status = "Running"

    assert set(client.status(submission).values()) == {"Running"}
    assert [r.method for r in transport.requests] == ["GET"] * 5
    assert transport.requests[-1].path.endswith("-serverapp")

    transport.requests.clear()
    done = client.cancel(submission)
    assert set(done.values()) == {"cancel requested"}
    cancels = [r.path for r in transport.requests if r.method == "POST"]
    assert cancels[0].endswith("-serverapp/cancel")  # the submission first, the SuperLink last
    assert cancels[-1].endswith("-superlink/cancel")
    assert len(cancels) == 5

    transport.job_status = "Completed"
    assert set(client.cancel(submission).values()) == {"already Completed"}


def test_wait_returns_when_the_serverapp_job_ends(spec, credential, transport):
    client = _client(spec, credential, transport)
    submission = client.submit(submission_id="20260101-000000-0002")
    transport.job_status = "Completed"
    seen = []
    statuses = client.wait(submission, poll=0.01, on_status=seen.append)
    assert statuses["serverapp"] == "Completed" and seen[-1] == statuses


def test_a_rejected_request_names_the_job_and_the_fix(spec, credential, transport):
    transport.fail[r"/jobs/.*-silo-hospital-b$"] = (404, "Compute cpu-silo-b not found")
    with pytest.raises(AzureMLError) as info:
        _client(spec, credential, transport).submit(submission_id="20260101-000000-0003")
    message = str(info.value)
    assert "silo:hospital-b" in message and "HTTP 404" in message
    assert "Compute cpu-silo-b not found" in message
    assert "az ml compute list" in message
    # The jobs created before the failure are cancelled, not left running.
    cancelled = [r.path for r in transport.requests if r.method == "POST"]
    assert [p.rsplit("/", 2)[-2].rsplit("-", 1)[-1] for p in cancelled] == ["a", "superlink"]
    assert "cancelled the jobs already created" in message


def test_missing_credentials_fail_with_az_login_hint(spec, monkeypatch, tmp_path):
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET",
                 "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME", "MSI_ENDPOINT",
                 "IDENTITY_ENDPOINT", "AZURE_TOKEN_CREDENTIALS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # no az / azd / pwsh to ask
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))  # no cached login
    with pytest.raises(AzureMLAuthError) as info:
        AzureMLClient(spec).submit(submission_id="20260101-000000-0004")
    assert "`az login`" in str(info.value)
    assert NO_CREDENTIALS_HINT in str(info.value)


def test_logs_of_an_unknown_job_lists_the_roles(spec, credential, transport):
    submission = _client(spec, credential, transport).submit(submission_id="20260101-000000-0005")
    with pytest.raises(AzureMLError, match="no job 'nope'; jobs: superlink, hospital-a"):
        submission.job("nope")


class _Advancing(RecordingTransport):
    """Each poll of the jobs (the ServerApp job is read last) moves their status on."""

    def __init__(self, *statuses: str) -> None:
        super().__init__(job_status=statuses[0])
        self.next = list(statuses[1:])

    def _answer(self, rec):
        answer = super()._answer(rec)
        if rec.method == "GET" and rec.path.endswith("-serverapp") and self.next:
            self.job_status = self.next.pop(0)
        return answer


def test_submit_wait_shows_each_status_change_once(spec, write_spec, credential, monkeypatch):
    """`fedsilo submit --wait` on AzureML (real SDK, recorded ARM): while it waits, the
    jobs' status is shown with the time elapsed, one line per change (not per poll)."""
    transport = _Advancing("Starting", "Running", "Running", "Completed")

    class Recorded(AzureMLBackend):
        def __init__(self):
            super().__init__(
                credential=credential, transport=transport, enable_telemetry=False,
                show_progress=False,
            )  # fmt: skip

    monkeypatch.setitem(backends._REGISTRY, "azureml-recorded", Recorded)
    path = write_spec(spec.to_yaml())
    result = CliRunner().invoke(
        app, ["submit", str(path), "-b", "azureml-recorded", "--wait", "--poll", "0.01"]
    )
    assert result.exit_code == 0, result.output
    waiting = [line for line in result.output.splitlines() if line.startswith("waiting")]
    roles = "superlink={0} silo:hospital-a={0} silo:hospital-b={0} silo:hospital-c={0} "
    assert [line.split(": ", 1)[1] for line in waiting] == [
        (roles + "serverapp={0}").format(status) for status in ("Starting", "Running", "Completed")
    ]
    # the elapsed time is shown in h:mm:ss (its value is the machine's speed: not asserted)
    assert all(re.search(r", \d+:\d\d:\d\d elapsed", line) for line in waiting)
    assert "federation run completed" in result.output
