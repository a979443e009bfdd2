"""Simulation at scale: 10 000 virtual clients, a fraction of a percent sampled each round.

Runs the app with real ``flwr run`` and the simulation engine
(``--federation-config num-supernodes=10000 client-resources-num-cpus=1``: two Ray actors
on this 2-core machine, each running one ClientApp at a time for any of the virtual
SuperNodes), samples every process of the federation (``flwr run``, the SuperLink, the
ServerApp, the simulation engine, Ray's raylet/GCS/workers) each second, and prints:

* peak summed RSS (and peak summed PSS, which counts shared pages once) over all of them,
  and the largest single process;
* seconds per round, from the time the ServerApp's round lines reach the streamed log
  (``[fedsilo] round r server: …``), and the start-up time until round 0.

What keeps memory flat: a virtual client is a ``Context`` in the SuperLink (its node
config and a small persistent state), not a model; a Ray actor builds one model per
message and drops it; each actor process builds only the partitions of the silos it
serves, on demand (``tasks.partitioning.LazyPartitions``); the server holds one global
model. Sampling draws ``sampling.fraction-train`` of the silos per round. With
``--rows-per-client`` (fraud) the data grows with the clients (a generated data set of
that many training rows per silo, written to a CSV the run reads as its data source), so
a silo's work stays the same at any scale.

``--ray-address HOST:PORT`` runs the simulation on an existing Ray cluster (``ray start
--head`` / ``ray start --address``; see docs/efficiency.md) instead of the Ray instance
Flower starts itself; the memory sampled is then only this machine's.

Usage::

    python -m benchmarks.scale                  # fraud, 10 000 clients, 50 trained a round
    python -m benchmarks.scale --clients 1000 --fraction-train 0.05 --fraction-evaluate 0.02
    python -m benchmarks.scale --clients 200 --rounds 3 --fraction-train 0.1 --no-write
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from benchmarks import harness
from benchmarks.efficiency_doc import DOC, write_section
from benchmarks.harness import Table
from fl_app.local_run import (  # at module level: a renamed helper fails every import test
    PROJECT_DIR,
    _free_port,
    _prestart_superlink,
    run_config_arg,
    superlinks_of,
)

ROUND_LINE = re.compile(r"\[fedsilo\] round (\d+) server:")


def process_name(proc: psutil.Process) -> str:
    """What a process is: its program (``flwr-simulation``, ``raylet``, …; the script a
    Python interpreter runs, not the interpreter) or its title (``ray::ClientAppActor``)."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    parts = [c for c in cmd if c] or ["?"]
    first = os.path.basename(parts[0])
    if first.startswith("python") and len(parts) > 1:
        first = os.path.basename(parts[1]) if parts[1] != "-m" else " ".join(parts[1:3])
    return first.strip()[:80]


class TreeSampler(threading.Thread):
    """Samples RSS/PSS of this process's descendants and every process whose command
    line mentions ``marker`` (the run's FLWR_HOME), with their descendants."""

    def __init__(self, marker: str, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.marker = marker
        self.interval = interval
        self.stop = threading.Event()
        self.peak_rss = self.peak_pss = self.peak_single = 0
        self.peak_single_name = ""
        self.peak_procs = 0

    def _procs(self) -> list[psutil.Process]:
        roots = [psutil.Process(), *harness.processes_with(self.marker)]
        found = {}
        for root in roots:
            try:
                for p in [root, *root.children(recursive=True)]:
                    found[p.pid] = p
            except psutil.NoSuchProcess:
                continue
        found.pop(os.getpid(), None)  # the benchmark itself is not the federation
        return list(found.values())

    def run(self) -> None:
        while not self.stop.is_set():
            rss = pss = 0
            procs = self._procs()
            for p in procs:
                try:
                    info = p.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
                if info.rss > self.peak_single:
                    self.peak_single = info.rss
                    self.peak_single_name = process_name(p)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, len(procs))
            self.stop.wait(self.interval)


def scaled_data(args, directory: Path) -> Path:
    """A generated fraud CSV with ``rows-per-client`` training rows per silo (after the
    server's ``data.test-fraction`` hold-out), for ``data.source``."""
    from fl_app.config import RunConfig
    from tasks.fraud import generate_fraud_frame

    if args.task != "fraud":
        raise SystemExit(f"--rows-per-client generates fraud data; --task is {args.task!r}")
    test_fraction = RunConfig().data.test_fraction
    rows = round(args.clients * args.rows_per_client / (1 - test_fraction))
    path = directory / f"fraud-{rows}.csv"
    generate_fraud_frame(n_rows=rows).to_csv(path, index=False)
    return path


def run_scale(args) -> dict:
    sampled = max(args.min_train, int(args.clients * args.fraction_train))
    overrides = {
        "task": args.task,
        "num-server-rounds": args.rounds,
        "sampling.fraction-train": args.fraction_train,
        "sampling.fraction-evaluate": args.fraction_evaluate,
        "sampling.min-train-nodes": args.min_train,
        "sampling.min-evaluate-nodes": args.min_train if args.fraction_evaluate > 0 else 0,
        "sampling.min-available-nodes": args.clients,
        "training.local-epochs": 1,
        "sampling.round-timeout": args.round_timeout,
    }
    federation = {"num-supernodes": args.clients, "client-resources-num-cpus": args.cpus}
    with tempfile.TemporaryDirectory(prefix="fedsilo-scale-") as home:
        env = harness.child_env(
            FLWR_HOME=home,
            FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(_free_port()),
            FLWR_LOCAL_CONTROL_API_PORT=str(_free_port()),
        )
        if args.ray_address:  # Flower's backend calls ray.init() without an address
            env["RAY_ADDRESS"] = args.ray_address
        overrides["output.run-dir"] = str(Path(home) / "runs")
        if args.rows_per_client:
            overrides["data.source"] = str(scaled_data(args, Path(home)))
        cmd = [
            "flwr", "run", str(PROJECT_DIR), "--stream",
            "--run-config", run_config_arg(overrides),
            "--federation-config", run_config_arg(federation),
        ]  # fmt: skip
        sampler = TreeSampler(home)
        sampler.start()
        start = time.monotonic()
        round_times: dict[int, float] = {}
        tail: list[str] = []
        _prestart_superlink(env)  # flwr run alone gives it 15 s, too few on a busy machine
        popen = {"env": env, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        try:
            with harness.child(cmd, **popen) as proc:  # its tree is stopped when done
                assert proc.stdout is not None
                for line in proc.stdout:
                    tail = [*tail[-200:], line]
                    if (match := ROUND_LINE.search(line)) is not None:
                        rnd = int(match.group(1))
                        round_times.setdefault(rnd, time.monotonic() - start)
                        print(f"  round {rnd} at {round_times[rnd]:.1f} s", flush=True)
                proc.wait(timeout=args.timeout)
        finally:
            for superlink in superlinks_of(Path(home)):
                harness.stop_tree(superlink)
            sampler.stop.set()
            sampler.join()
        total = time.monotonic() - start
        runs = sorted((Path(home) / "runs").glob("*/metrics.json"))
        metrics = json.loads(runs[-1].read_text()) if runs else []
    if args.rounds not in round_times or 0 not in round_times:
        raise RuntimeError("the run did not complete:\n" + "".join(tail[-60:]))
    per_round = (round_times[args.rounds] - round_times[0]) / args.rounds
    server = [m for m in metrics if m["phase"] == "server"]
    train = [m for m in metrics if m["phase"] == "train"]
    return {
        "clients": args.clients,
        "rounds": args.rounds,
        "task": args.task,
        "fraction_train": args.fraction_train,
        "fraction_evaluate": args.fraction_evaluate,
        "sampled_per_round": sampled,
        "replies_per_round": [m.get("replies") for m in train],
        "cpus_per_client": args.cpus,
        "rows_per_client": args.rows_per_client,
        "ray_address": args.ray_address,
        "seconds_per_round": per_round,
        "round_times": round_times,
        "startup_seconds": round_times[0],
        "total_seconds": total,
        "peak_rss_mib": sampler.peak_rss / 2**20,
        "peak_pss_mib": sampler.peak_pss / 2**20,
        "peak_single_mib": sampler.peak_single / 2**20,
        "peak_single_process": sampler.peak_single_name,
        "processes": sampler.peak_procs,
        "final_server": {k: v for k, v in (server[-1] if server else {}).items()},
        "machine": {
            "cpus": harness.cpu_count(),
            "ram_gib": harness.memory_gib(),
            "load_before": args.load_before,
        },
        "when": harness.utc_now(),
    }


def engine_sweep_seconds(nodes: int, outstanding: int, sample: int = 200) -> float:
    """Seconds one sweep of Flower's simulation engine takes over ``nodes`` virtual nodes
    while ``outstanding`` instructions wait in its state (each of ``outstanding`` nodes
    holds one). The engine (``vce_api.add_messages_to_queue``) asks the in-memory
    LinkState for every node's next instruction every 0.1 s, and each ask scans every
    stored instruction; this times that ask, on Flower's own classes, for ``sample``
    nodes holding none (most nodes, in a sampled round) and scales it to ``nodes``."""
    from uuid import uuid4

    from flwr.app import Message, MessageType, RecordDict
    from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.federation.noop_federation_manager import NOOP_FEDERATION_ID

    factory = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    )
    state = factory.state()
    run_id = state.create_run(
        "bench/sweep", "1", "0", {}, NOOP_FEDERATION_ID, None, "bench", "serverapp"
    )
    node_ids = list(_register_nodes(nodes, factory))
    # Messages need a task identity (process-wide): set for this run, restored after.
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id = run_id, 0
    TaskIdentity.task_id = state.run_ids[run_id].run.primary_task_id
    try:
        for node in node_ids[:outstanding]:  # what a Grid's push does, minus its checks
            msg = Message(RecordDict({}), dst_node_id=node, message_type=MessageType.QUERY)
            msg.metadata.__dict__.update(_message_id=str(uuid4()), _run_id=run_id, _src_node_id=1)
            state.store_message_ins(msg)
    finally:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = saved
    idle = node_ids[outstanding : outstanding + sample] or node_ids[:sample]
    with harness.Stopwatch() as clock:
        for node in idle:
            state.get_message_ins(node_id=node, limit=1)
    return clock.seconds / len(idle) * nodes


def markdown(r: dict) -> str:
    acc = r["final_server"].get("accuracy")
    auc = r["final_server"].get("roc-auc")
    quality = f"final server accuracy {acc:.4f}" if acc is not None else ""
    if auc is not None:
        quality += f", ROC-AUC {auc:.4f}"
    data = (
        f"a generated fraud data set of {r['rows_per_client']} training rows per client"
        if r.get("rows_per_client")
        else "the task's offline data set"
    )
    where = (
        f"on the existing Ray cluster at `{r['ray_address']}` (memory: this machine only)"
        if r.get("ray_address")
        else "on the Ray instance Flower starts itself"
    )
    table = Table(["measure", "value"]).extend([
        [f"peak RSS, all {r['processes']} processes summed", f"{r['peak_rss_mib']:,.0f} MiB"],
        ["peak PSS, summed (shared pages once)", f"{r['peak_pss_mib']:,.0f} MiB"],
        ["largest single process",
         f"{r['peak_single_mib']:,.0f} MiB (`{r['peak_single_process']}`)"],
        ["seconds per round", f"{r['seconds_per_round']:.1f}"],
        ["start-up until round 0 (SuperLink, Ray, roll call of all silos)",
         f"{r['startup_seconds']:.1f} s"],
        ["total wall time", f"{r['total_seconds']:.1f} s"],
    ])  # fmt: skip
    return f"""## Simulation at scale (`python -m benchmarks.scale`)

Real `flwr run` with the simulation engine {where}: **{r["clients"]:,} virtual clients**,
task `{r["task"]}` on {data}, {r["rounds"]} rounds,
`sampling.fraction-train = {r["fraction_train"]}` ({r["sampled_per_round"]} silos trained per
round, replies per round:
{r["replies_per_round"]}), `sampling.fraction-evaluate = {r["fraction_evaluate"]}`, 1 local epoch,
`client-resources-num-cpus = {r["cpus_per_client"]}`. Machine: {r["machine"]["cpus"]} cores,
{r["machine"]["ram_gib"]:.0f} GiB RAM, load average {r["machine"]["load_before"]:.1f} when
started (shared with other jobs). Run {r["when"]}.

{table.markdown()}

No OOM: {quality}. Memory stays flat because a virtual client is a `Context` in the
SuperLink, not a model; a Ray actor keeps one model object per task and loads each
message's weights into it; each actor process builds only the partitions of the silos it
serves, on demand (`tasks.partitioning.LazyPartitions`); the server holds one global model
and, with top-k compression, one EF21 estimate per silo that sent one, memory-mapped
beyond 256 MiB (`strategies.compression.records.EstimateStore`).
"""


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(
        __doc__, rounds=10, out=DOC, json=Path("docs/efficiency-scale.json"), no_write=None,
        render_only="rewrite the doc section from --json (no run)",
    )  # fmt: skip
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--task", default="fraud")
    parser.add_argument("--fraction-train", type=float, default=0.005)
    parser.add_argument("--fraction-evaluate", type=float, default=0.002)
    parser.add_argument("--min-train", type=int, default=2)
    parser.add_argument("--cpus", type=float, default=1, help="client-resources-num-cpus")
    parser.add_argument(
        "--rows-per-client", type=int, default=24,
        help="fraud training rows per silo, generated (0 = the task's offline data set)",
    )  # fmt: skip
    parser.add_argument("--ray-address", default="", help="an existing Ray cluster, HOST:PORT")
    parser.add_argument("--round-timeout", type=float, default=4 * 3600.0)
    parser.add_argument("--timeout", type=float, default=6 * 3600.0)
    parser.add_argument(
        "--engine-sweep", nargs=2, type=int, metavar=("NODES", "OUTSTANDING"),
        help="only time one sweep of Flower's simulation engine (see engine_sweep_seconds)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.render_only:
        text = markdown(json.loads(args.json.read_text()))
        write_section("scale", f"{text.rstrip()}\n\n{harness.rerender_note('scale')}\n", args.out)
        return 0
    if args.engine_sweep:
        nodes, outstanding = args.engine_sweep
        seconds = engine_sweep_seconds(nodes, outstanding)
        print(f"{nodes} nodes, {outstanding} outstanding: {seconds:.2f} s per sweep "
              f"(load average {harness.load_average(None):.1f})")  # fmt: skip
        return 0
    outputs = [] if args.no_write else [args.out, args.json]
    code = harness.start("scale", argv, outputs, allow_dirty=args.allow_dirty).code
    args.load_before = harness.load_average(None)
    result = run_scale(args)
    result["code"] = code.to_json()
    print(json.dumps({k: v for k, v in result.items() if k != "round_times"}, indent=1))
    if not args.no_write:
        write_section("scale", markdown(result), args.out, code)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
