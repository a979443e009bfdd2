"""A real deployment runtime on loopback for the e2e tests: ``flower-superlink`` and N
SuperNodes (the processes the local backend, adapters/local/run.py, starts: by default
the warm SuperNode of adapters/supernode, with the ServerApp's prompt reply polling; or
Flower's default ``flower-supernode`` with ``executor="subprocess"``), an isolated
``FLWR_HOME``, ``flwr run`` against it. Every process started here is stopped by pid when
the test ends (SIGTERM, wait, SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from adapters.federation.flower import (
    FLWR_CONNECTION,
    WARM_RUN_CONFIG,
    wait_http_ok,
    write_flower_config,
)
from adapters.local.run import _online_nodes, _Proc, _start, _stop_all
from adapters.supernode import supernode_command
from fl_app.local_run import PROJECT_DIR, _free_port, run_config_arg


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants (a crash, not a shutdown)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)


def wait_for(predicate, what: str, timeout: float = 600.0, proc: _Proc | None = None) -> None:
    """Poll ``predicate`` every 0.2 s; fail naming ``what`` (with ``proc``'s log) on timeout
    or when ``proc`` exits first. Generous: only a loaded machine gets near it."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.popen.poll() is not None:
            pytest.fail(f"{proc.name} exited before {what}:\n{proc.log(60)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}" + (f":\n{proc.log(60)}" if proc else ""))
        time.sleep(0.2)


class Deployment:
    """One SuperLink and ``silos`` SuperNodes (partition ids 0…silos−1) on loopback, warm
    (default) or Flower's own (``executor="subprocess"``)."""

    def __init__(self, silos: int, executor: str = "warm") -> None:
        self.executor = executor
        self.home = Path(tempfile.mkdtemp(prefix="fedsilo-deploy-"))
        self.logs = self.home / "logs"
        self.logs.mkdir()
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        self.procs: list[_Proc] = []
        self.silos: list[_Proc] = []
        self.num_silos = silos
        self.runs = 0

    def start(self) -> Deployment:
        port = _free_port()
        write_flower_config(self.home, f"127.0.0.1:{port}")
        self.superlink = self._start(
            "superlink",
            ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
             "--host", "127.0.0.1", "--port", str(port)],
        )  # fmt: skip
        wait_http_ok(f"http://127.0.0.1:{port}/health", self.superlink.popen, 120)
        for pid in range(self.num_silos):
            flower_args = [
                "--insecure", "--superlink", f"127.0.0.1:{port}",
                "--host", "127.0.0.1", "--port", str(_free_port()),
                "--node-config", f"partition-id={pid} num-partitions={self.num_silos}",
            ]  # fmt: skip
            command = supernode_command(flower_args, self.executor)
            self.silos.append(self._start(f"silo-{pid}", command))
        wait_for(lambda: _online_nodes(self.env) >= self.num_silos, "the SuperNodes to register")
        return self

    def _start(self, name: str, cmd: list[str]) -> _Proc:
        proc = _start(name, cmd, self.env, self.logs)
        self.procs.append(proc)
        return proc

    def flwr_run(self, overrides: dict[str, Any], project: Path = PROJECT_DIR) -> _Proc:
        """``flwr run <project> <connection> --stream`` with ``overrides`` (not waited for);
        a warm deployment's ServerApp polls its replies promptly unless they say otherwise."""
        if self.executor == "warm":
            overrides = {**WARM_RUN_CONFIG, **overrides}
        self.runs += 1
        return self._start(
            f"flwr-run-{self.runs}",
            ["flwr", "run", str(project), FLWR_CONNECTION, "--stream",
             "--run-config", run_config_arg(overrides)],
        )  # fmt: skip

    def kill_silo(self, partition: int) -> int:
        """SIGKILL the SuperNode of ``partition`` with its ClientApp; return its node id."""
        node = self.node_id(partition)
        kill_tree(self.silos[partition].popen.pid)
        return node

    wait_for = staticmethod(wait_for)

    def node_id(self, partition: int) -> int:
        return int(re.search(r"SuperNode ID: (\d+)", self.silos[partition].log()).group(1))

    def serverapps(self) -> list[psutil.Process]:
        """The ``flwr-serverapp`` processes the SuperLink started for its runs."""
        procs = psutil.Process(self.superlink.popen.pid).children(recursive=True)
        found = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                if any("flwr-serverapp" in part for part in proc.cmdline()):
                    found.append(proc)
        return found

    def stop(self) -> None:
        _stop_all(self.procs)


@pytest.fixture
def deployment() -> Iterator[Any]:
    """``deployment(silos, executor="warm")`` starts a loopback federation; all of it is
    stopped afterwards."""
    started: list[Deployment] = []

    def start(silos: int, executor: str = "warm") -> Deployment:
        fed = Deployment(silos, executor)
        started.append(fed)
        return fed.start()

    try:
        yield start
    finally:
        for fed in started:
            fed.stop()
