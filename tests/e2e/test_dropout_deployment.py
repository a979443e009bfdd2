"""A silo dies mid-round on the real deployment runtime and the federation goes on.

flower-superlink + 4 flower-supernode + ``flwr run`` on loopback (the processes the local
backend, adapters/azureml/local.py, starts). When round 1's training instructions are
out, one SuperNode is SIGKILLed with its ClientApp; with ``min-train-nodes = 3`` the
round aggregates the 3 replies that arrive (``straggler-timeout`` = 5 s after the third,
rather than the generous ``round-timeout``) and the run completes. The audit log names
the missing silo. Every process started here is stopped by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from adapters.azureml.jobs import FLWR_CONNECTION
from adapters.azureml.local import _start, _stop_all
from adapters.azureml.runtime import wait_http_ok, write_flower_config
from fl_app.audit import read_audit_log, verify_audit_log
from fl_app.local_run import PROJECT_DIR, _free_port, run_config_arg

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

SILOS = 4
VICTIM = 3  # partition id of the SuperNode that is killed


def _online_nodes(env: dict[str, str]) -> int:
    """SuperNodes the SuperLink lists as online (``flwr supernode list``; on a loaded
    machine the CLI can print its answer and then linger, so a timeout keeps the output)."""
    cmd = ["flwr", "supernode", "list", "--format", "json"]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, timeout=30, check=False).stdout
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
    try:
        nodes = json.loads(out).get("nodes", [])
    except ValueError:
        return 0
    return sum(1 for node in nodes if node.get("status") == "online")


def _kill_tree(pid: int) -> None:
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)


def test_one_of_four_supernodes_killed_mid_round_and_the_run_completes(tmp_path):
    home = Path(tempfile.mkdtemp(prefix="fedsilo-dropout-"))
    logs = home / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    overrides = {
        "task": "breast-cancer", "num-server-rounds": 2, "local-epochs": 1, "seed": 3,
        "fraction-evaluate": 0.0, "min-evaluate-nodes": 0,
        "min-train-nodes": 3, "min-available-nodes": 3, "round-timeout": 600.0,
        "straggler-timeout": 5.0,
        "run-dir": str(tmp_path / "runs"),
    }  # fmt: skip
    procs = []
    try:
        port = _free_port()
        write_flower_config(home, f"127.0.0.1:{port}")
        superlink = _start(
            "superlink",
            ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
             "--host", "127.0.0.1", "--port", str(port)],
            env, logs,
        )  # fmt: skip
        procs.append(superlink)
        wait_http_ok(f"http://127.0.0.1:{port}/health", superlink.popen, 120)
        silos = []
        for pid in range(SILOS):
            silo = _start(
                f"silo-{pid}",
                ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                 "--host", "127.0.0.1", "--port", str(_free_port()),
                 "--node-config", f"partition-id={pid} num-partitions={SILOS}"],
                env, logs,
            )  # fmt: skip
            procs.append(silo)
            silos.append(silo)
        deadline = time.monotonic() + 600
        while _online_nodes(env) < SILOS:
            assert time.monotonic() < deadline, "SuperNodes did not register"
            time.sleep(1.0)

        flwr = _start(
            "flwr-run",
            ["flwr", "run", str(PROJECT_DIR), FLWR_CONNECTION, "--stream",
             "--run-config", run_config_arg(overrides)],
            env, logs,
        )  # fmt: skip
        procs.append(flwr)
        # Kill the victim as soon as round 1's training instructions are sent.
        deadline = time.monotonic() + 600  # generous: only a loaded machine gets near it
        while not re.search(r"configure_train: Sampled 4 nodes", flwr.log()):
            assert flwr.popen.poll() is None, flwr.log()
            assert time.monotonic() < deadline, flwr.log()
            time.sleep(0.2)
        victim = int(re.search(r"SuperNode ID: (\d+)", silos[VICTIM].log()).group(1))
        _kill_tree(silos[VICTIM].popen.pid)

        code = flwr.popen.wait(timeout=900)
        output = flwr.log()
    finally:
        _stop_all(procs)

    assert code == 0, output[-3000:]
    (run_dir,) = [p.parent for p in (tmp_path / "runs").glob("*/audit.jsonl")]
    entries = read_audit_log(run_dir / "audit.jsonl")
    assert verify_audit_log(run_dir / "audit.jsonl") == len(entries)
    trains = [e for e in entries if e["event"] == "train"]
    assert [e["round"] for e in trains] == [1, 2]
    # The victim is missing from round 1 (killed before it could reply) and every round
    # still aggregated the others' updates.
    for entry in trains:
        assert entry["outcome"] == "aggregated"
        assert len(entry["updates"]) >= 3
    # (Its partition id is known only if it answered the roll call within the grace.)
    assert [m["node-id"] for m in trains[0]["missing"]] == [victim], trains[0]
    assert trains[0]["missing"][0]["partition-id"] in (VICTIM, None)
    # A dead silo sends nothing afterwards: in round 2 it is either no longer listed by
    # the SuperLink (heartbeat lapsed) or missing / answered by a "node unavailable" error.
    for entry in trains:
        assert victim not in {u["node-id"] for u in entry["updates"]}
    assert entries[-1]["event"] == "run-end", output[-3000:]  # written only on success
    assert (run_dir / "model.pt").is_file()
