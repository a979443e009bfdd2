"""End-to-end: the simulation attached to an existing Ray cluster instead of the Ray
instance Flower starts itself.

A head node and a worker node are started with ``ray start --head`` / ``ray start
--address`` on loopback (free ports, their own temp dir, one CPU each), the way a real
cluster is started on two machines. ``flwr run`` then finds the cluster through
``RAY_ADDRESS`` (Flower's Ray backend calls ``ray.init()`` without an address, so Ray
reads it), and its ClientApp actors run on both nodes. Both ``ray start --block``
processes are stopped by pid with every process under them; nothing is left behind
(checked), and ``ray stop`` is never used (it would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fl_app.local_run import _free_port, run_simulation, stop_process_tree

pytestmark = pytest.mark.e2e

SILOS = 6


class RayCluster:
    """A Ray head and one worker node on loopback, each ``ray start --block`` (so every
    Ray process of a node is a descendant of one process we started)."""

    def __init__(self) -> None:
        # Short: Ray puts Unix sockets under it (107-byte limit). Its own dir also keeps
        # the cluster's address file away from /tmp/ray, where other ray.init() calls
        # on this machine would look for a cluster to join.
        self.temp_dir = tempfile.mkdtemp(prefix="fedsilo-ray-", dir="/tmp")
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: dict[str, subprocess.Popen] = {}
        self.logs: list = []

    def _start(self, name: str, args: list[str]) -> None:
        ports = [
            "--node-manager-port", "--object-manager-port", "--metrics-export-port",
            "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
        ]  # fmt: skip
        cmd = ["ray", "start", *args, "--block", "--num-cpus", "1", "--num-gpus", "0",
               "--object-store-memory", str(200 * 2**20), "--node-ip-address", "127.0.0.1",
               "--temp-dir", self.temp_dir, "--disable-usage-stats",
               *(arg for port in ports for arg in (port, str(_free_port())))]  # fmt: skip
        log = open(Path(self.temp_dir) / f"{name}.log", "wb")  # noqa: SIM115
        self.logs.append(log)  # closed by stop()
        self.nodes[name] = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def start(self, timeout: float = 600.0) -> RayCluster:
        """Start both nodes and wait until the cluster counts two live nodes."""
        self._start("head", ["--head", "--port", str(self.port), "--include-dashboard",
                             "false", "--ray-client-server-port", str(_free_port())])  # fmt: skip
        self._start("worker", ["--address", self.address])
        deadline = time.monotonic() + timeout
        while (alive := self.alive_nodes()) < 2:
            for name, proc in self.nodes.items():
                if proc.poll() is not None:
                    pytest.fail(f"ray start ({name}) exited with {proc.returncode}:\n"
                                f"{self.log(name)}")  # fmt: skip
            if time.monotonic() > deadline:
                pytest.fail(f"{alive} of 2 Ray nodes up after {timeout} s:\n{self.log('worker')}")
            time.sleep(1.0)
        return self

    def alive_nodes(self) -> int:
        """Live nodes the cluster's GCS reports (asked by a short-lived driver)."""
        probe = (
            "import sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        try:
            out = subprocess.run(
                [sys.executable, "-c", probe, self.address],
                env=self.env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return 0
        lines = out.stdout.strip().splitlines()
        return int(lines[-1]) if out.returncode == 0 and lines and lines[-1].isdigit() else 0

    def log(self, name: str) -> str:
        return (Path(self.temp_dir) / f"{name}.log").read_text(errors="replace")[-3000:]

    def descendants(self, name: str) -> list[psutil.Process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            return psutil.Process(self.nodes[name].pid).children(recursive=True)
        return []

    def leftovers(self) -> list[psutil.Process]:
        """Processes still naming this cluster's temp dir in their command line."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(self.temp_dir in part for part in proc.info.get("cmdline") or []):
                found.append(proc)
        return found

    def stop(self) -> None:
        """Stop both nodes by pid, worker first, each with every process under it; then
        anything still naming the temp dir (a Ray process that escaped its tree)."""
        for name in ("worker", "head"):
            if name in self.nodes:
                with contextlib.suppress(psutil.NoSuchProcess):
                    stop_process_tree(psutil.Process(self.nodes[name].pid), timeout=20)
                self.nodes[name].wait(timeout=30)
        for proc in self.leftovers():
            with contextlib.suppress(psutil.NoSuchProcess):
                stop_process_tree(proc, timeout=10)
        for log in self.logs:
            log.close()
        if not self.leftovers():
            shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def ray_cluster() -> Iterator[RayCluster]:
    cluster = RayCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


class ActorWatch(threading.Thread):
    """Notes, per Ray node, the process titles of its workers while the run goes on:
    Ray titles an actor process ``ray::ClientAppActor.run`` while it runs a message."""

    def __init__(self, cluster: RayCluster, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.cluster, self.interval = cluster, interval
        self.titles: dict[str, set[str]] = {name: set() for name in cluster.nodes}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for name in self.titles:
                for proc in self.cluster.descendants(name):
                    with contextlib.suppress(psutil.Error):
                        self.titles[name].add(" ".join(proc.cmdline()).strip())
            self.done.wait(self.interval)


def test_simulation_runs_its_clientapps_on_an_existing_two_node_ray_cluster(
    ray_cluster, monkeypatch
):
    """``RAY_ADDRESS`` attaches the simulation to the cluster: the run completes and
    learns, its ClientApp actors execute messages on the head AND the worker node (one
    CPU each, one actor each), and stopping the cluster leaves no Ray process behind."""
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    watch = ActorWatch(ray_cluster)
    watch.start()
    try:
        run = run_simulation(
            {"num-server-rounds": 2, "sampling.min-available-nodes": SILOS},
            num_supernodes=SILOS,
            federation_config={"client-resources-num-cpus": 1},
            timeout=900,
        )
    finally:
        watch.done.set()
        watch.join()
    assert run.ok, run.output[-3000:]
    assert f"roll call: {SILOS} silos" in run.output
    server = [r for r in run.metrics if r["phase"] == "server"]
    assert [r["round"] for r in server] == [0, 1, 2]
    assert server[-1]["accuracy"] > server[0]["accuracy"] + 0.3  # it learned
    for node in ("head", "worker"):
        running = [t for t in watch.titles[node] if t.startswith("ray::ClientAppActor.run")]
        assert running, f"no ClientApp ran on the {node} node; saw {sorted(watch.titles[node])}"
    assert "Terminated 2 actors" in run.output  # the cluster's 2 CPUs, 1 per ClientApp

    pids = {p.pid for name in ray_cluster.nodes for p in ray_cluster.descendants(name)}
    pids |= {proc.pid for proc in ray_cluster.nodes.values()}
    assert len(pids) > 4  # GCS, raylets, agents: the cluster was really there
    temp_dir = ray_cluster.temp_dir
    ray_cluster.stop()
    assert not Path(temp_dir).exists()
    assert not [pid for pid in pids if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
    assert ray_cluster.leftovers() == []
