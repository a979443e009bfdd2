"""The in-job wrapper: Flower config, placeholders, address discovery through a real MLflow
store (sqlite), Key Vault secret download over real HTTP, and the SuperLink role for real."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import psutil
import pytest
from azureml_testkit import REPO_ROOT, FakeCredential
from mlflow import MlflowClient

from adapters.azureml.jobs import ADDRESS_TAG, RUN_STATUS_TAG
from adapters.azureml.runtime import (
    fetch_secret,
    parse_args,
    private_ip,
    publish_tags,
    run_finished,
    substitute,
    supervise,
    wait_for_address,
)
from adapters.federation.flower import write_flower_config
from fl_app.local_run import _free_port, stop_process_tree


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def mlflow_client(tracking_uri) -> MlflowClient:
    client = MlflowClient(tracking_uri=tracking_uri)
    client.create_experiment("fedsilo-test")
    return client


def _new_run(client: MlflowClient) -> str:
    experiment = client.get_experiment_by_name("fedsilo-test").experiment_id
    return client.create_run(experiment).info.run_id


def test_the_flower_config_is_what_flwr_reads(tmp_path, monkeypatch):
    from flwr.cli.flower_config import read_superlink_connection

    write_flower_config(tmp_path, "10.0.0.4:9091", insecure=False, root_certificates="/c/ca.pem")
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    connection = read_superlink_connection()  # the default connection
    assert connection.name == "fedsilo"
    assert connection.address == "10.0.0.4:9091"
    assert connection.root_certificates == "/c/ca.pem"
    assert not connection.insecure

    write_flower_config(tmp_path, "127.0.0.1:1234")
    assert read_superlink_connection("fedsilo").insecure


def test_placeholders_are_replaced_in_every_argument():
    cmd = ["flower-supernode", "--superlink", "{superlink}", "--root-certificates", "{ca}",
           "--node-config", "partition-id=0"]  # fmt: skip
    assert substitute(cmd, {"superlink": "10.0.0.4:9091", "ca": "/tmp/ca.pem"}) == [
        "flower-supernode", "--superlink", "10.0.0.4:9091", "--root-certificates",
        "/tmp/ca.pem", "--node-config", "partition-id=0",
    ]  # fmt: skip


def test_parse_args_needs_the_command_after_double_dash():
    args, cmd = parse_args(["supernode", "--superlink-job", "j", "--", "flower-supernode", "-h"])
    assert (args.role, args.superlink_job, cmd) == ("supernode", "j", ["flower-supernode", "-h"])
    with pytest.raises(SystemExit, match="usage"):
        parse_args(["supernode"])


def test_silos_find_the_address_the_superlink_published(mlflow_client):
    run_id = _new_run(mlflow_client)
    publish_tags(mlflow_client, {ADDRESS_TAG: "10.0.0.4:9091"}, run_id)
    assert wait_for_address(mlflow_client, run_id, timeout=5, poll=0.1) == "10.0.0.4:9091"
    assert run_finished(mlflow_client, run_id) is None
    publish_tags(mlflow_client, {RUN_STATUS_TAG: "finished:completed"}, run_id)
    assert run_finished(mlflow_client, run_id) == "finished:completed"


def test_waiting_for_an_address_that_never_comes(mlflow_client):
    with pytest.raises(TimeoutError, match=r"did not publish its address .* within 0s"):
        wait_for_address(mlflow_client, "no-such-job", timeout=0, poll=0.01)
    run_id = _new_run(mlflow_client)
    mlflow_client.set_terminated(run_id, status="FAILED")
    with pytest.raises(RuntimeError, match=r"ended \(FAILED\) without publishing its address"):
        wait_for_address(mlflow_client, run_id, timeout=5, poll=0.01)


def test_publishing_outside_an_azureml_job_says_why(mlflow_client, monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    with pytest.raises(RuntimeError, match="MLFLOW_RUN_ID is not set"):
        publish_tags(mlflow_client, {ADDRESS_TAG: "x:1"})


def test_key_vault_secrets_are_fetched_with_a_bearer_token(tmp_path):
    seen = {}

    class Vault(BaseHTTPRequestHandler):
        def do_GET(self):
            seen["path"], seen["auth"] = self.path, self.headers["Authorization"]
            body = json.dumps({"value": "-----BEGIN CERTIFICATE-----\nabc\n"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Vault)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/secrets/superlink-ca"
        credential = FakeCredential("kv-token")
        path = fetch_secret(url, tmp_path / "s" / "ca.pem", credential)
    finally:
        server.shutdown()
    assert path.read_text() == "-----BEGIN CERTIFICATE-----\nabc\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert seen == {"path": "/secrets/superlink-ca?api-version=7.4", "auth": "Bearer kv-token"}


def test_private_ip_is_an_ipv4_address():
    socket.inet_aton(private_ip())


@pytest.mark.e2e
def test_the_superlink_role_publishes_its_address_and_cleans_up(mlflow_client, tracking_uri):
    """``python -m adapters.azureml.runtime superlink`` for real: flower-superlink starts, its
    address lands on the run, and SIGTERM (AzureML's cancel) stops it with its children."""
    run_id = _new_run(mlflow_client)
    port = _free_port()
    env = {
        **os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_RUN_ID": run_id,
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
    }  # fmt: skip
    cmd = [
        sys.executable, "-m", "adapters.azureml.runtime", "superlink", "--port", str(port),
        "--stop-after-run", "--poll", "2", "--",
        "flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    wrapper = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        address = wait_for_address(mlflow_client, run_id, timeout=180, poll=0.5)
        assert address == f"{private_ip()}:{port}"
        children = psutil.Process(wrapper.pid).children(recursive=True)
        assert any("flower-superlink" in " ".join(c.cmdline()) for c in children)
        assert run_finished(mlflow_client, run_id) is None  # no run yet: it keeps serving
        wrapper.terminate()
        wrapper.wait(timeout=60)
        time.sleep(0.5)
        assert not [c for c in children if c.is_running() and c.status() != "zombie"]
    finally:
        if wrapper.poll() is None:
            stop_process_tree(psutil.Process(wrapper.pid))
    assert wrapper.returncode == 128 + 15, wrapper.stdout.read()


@pytest.mark.e2e
def test_a_superlink_that_gets_no_run_stops_itself(mlflow_client, tracking_uri):
    """A failed ServerApp submission must not leave the SuperLink job running (and billing)."""
    run_id = _new_run(mlflow_client)
    port = _free_port()
    env = {
        **os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_RUN_ID": run_id,
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
    }  # fmt: skip
    cmd = [
        sys.executable, "-m", "adapters.azureml.runtime", "superlink", "--port", str(port),
        "--stop-after-run", "--poll", "1", "--idle-timeout", "1", "--",
        "flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no run was submitted within 1s; stopping the SuperLink" in proc.stderr
    assert wait_for_address(mlflow_client, run_id, timeout=1) == f"{private_ip()}:{port}"
    assert not [
        p for p in psutil.process_iter(["cmdline"])
        if f"--port {port}" in " ".join(p.info.get("cmdline") or [])
    ]  # fmt: skip


# --------------------------------------------------------------------------- supervision


def _exits_with(tmp_path, codes: list[int]) -> list[str]:
    """A command whose n-th run exits with ``codes[n]`` (the last code from then on)."""
    counter = tmp_path / "runs"
    script = tmp_path / "node.py"
    script.write_text(
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) if p.exists() else 0\n"
        "p.write_text(str(n + 1))\n"
        f"codes = {codes!r}\n"
        "sys.exit(codes[min(n, len(codes) - 1)])\n"
    )
    return [sys.executable, str(script)]


def test_a_supernode_that_exits_is_restarted_with_back_off_until_it_ends_well(tmp_path, caplog):
    from adapters.supernode import RestartPolicy

    waits: list[float] = []
    code = supervise(
        _exits_with(tmp_path, [137, 1, 1, 0]), RestartPolicy(initial=1.0, maximum=3.0),
        sleep=waits.append,
    )  # fmt: skip
    assert code == 0
    assert (tmp_path / "runs").read_text() == "4"
    assert waits == [1.0, 2.0, 3.0]  # doubling, capped at the maximum
    assert caplog.text.count("SuperNode exited with code") == 3
    assert "restart 1 in 1s" in caplog.text and "restart 3 in 3s" in caplog.text


def test_supervision_stops_when_the_federation_ended_or_after_quick_failures(tmp_path, caplog):
    from adapters.supernode import RestartPolicy

    caplog.set_level("INFO", logger="fedsilo.azureml.runtime")
    ended = supervise(
        _exits_with(tmp_path, [1]), RestartPolicy(), ended=lambda: "the run ended (done)",
        sleep=lambda _s: None,
    )  # fmt: skip
    assert ended == 1 and (tmp_path / "runs").read_text() == "1"  # not restarted
    assert "not restarted: the run ended (done)" in caplog.text
    (tmp_path / "runs").unlink()
    gave_up = supervise(
        _exits_with(tmp_path, [3]), RestartPolicy(give_up_after=4), sleep=lambda _s: None
    )
    assert gave_up == 3 and (tmp_path / "runs").read_text() == "4"
    assert "4 times in a row" in caplog.text and "giving up" in caplog.text


def test_the_supernode_role_takes_the_restart_option():
    args, command = parse_args(
        ["supernode", "--restart-max-delay", "30", "--", "python", "-m", "adapters.supernode"]
    )
    assert args.restart_max_delay == 30.0 and command[:3] == ["python", "-m", "adapters.supernode"]
    args, _ = parse_args(["supernode", "--", "flower-supernode"])
    assert args.restart_max_delay is None  # not supervised unless asked
