"""Simulation at scale: 1 000 virtual clients, a few percent sampled each round.

Runs the app with real ``flwr run`` and the simulation engine
(``--federation-config num-supernodes=1000 client-resources-num-cpus=1``: two Ray actors
on this 2-core machine, each running one ClientApp at a time for any of the 1 000 virtual
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
model. Sampling draws ``fraction-train`` of the 1 000 silos per round.

Usage::

    python -m benchmarks.scale                         # fraud, 1 000 clients, 10 rounds, 5 %
    python -m benchmarks.scale --clients 200 --rounds 3 --fraction-train 0.1
"""

from __future__ import annotations

import argparse
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

from benchmarks.efficiency_doc import DOC, write_section

ROUND_LINE = re.compile(r"\[fedsilo\] round (\d+) server:")


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
        roots = [psutil.Process()]
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info.get("cmdline") or []
            if any(self.marker in c for c in cmd):
                roots.append(proc)
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
                    with_name = " ".join(p.cmdline()[:3]) if p.is_running() else "?"
                    self.peak_single_name = with_name[:80]
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, len(procs))
            self.stop.wait(self.interval)


def run_scale(args) -> dict:
    from fl_app.local_run import (
        PROJECT_DIR,
        _free_port,
        _prestart_superlink,
        _superlinks_of,
        run_config_arg,
        stop_process_tree,
    )

    sampled = max(args.min_train, int(args.clients * args.fraction_train))
    overrides = {
        "task": args.task,
        "num-server-rounds": args.rounds,
        "fraction-train": args.fraction_train,
        "fraction-evaluate": args.fraction_evaluate,
        "min-train-nodes": args.min_train,
        "min-evaluate-nodes": args.min_train if args.fraction_evaluate > 0 else 0,
        "min-available-nodes": args.clients,
        "local-epochs": 1,
    }
    federation = {"num-supernodes": args.clients, "client-resources-num-cpus": args.cpus}
    with tempfile.TemporaryDirectory(prefix="fedsilo-scale-") as home:
        env = {
            **os.environ,
            "FLWR_HOME": home,
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        overrides["run-dir"] = str(Path(home) / "runs")
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
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail = [*tail[-200:], line]
                if (match := ROUND_LINE.search(line)) is not None:
                    rnd = int(match.group(1))
                    round_times.setdefault(rnd, time.monotonic() - start)
                    print(f"  round {rnd} at {round_times[rnd]:.1f} s", flush=True)
            proc.wait(timeout=args.timeout)
        finally:
            if proc.poll() is None:
                stop_process_tree(psutil.Process(proc.pid))
            for superlink in _superlinks_of(Path(home)):
                stop_process_tree(superlink)
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
            "cpus": os.cpu_count(),
            "ram_gib": psutil.virtual_memory().total / 2**30,
            "load_before": args.load_before,
        },
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def markdown(r: dict) -> str:
    acc = r["final_server"].get("accuracy")
    auc = r["final_server"].get("roc-auc")
    quality = f"final server accuracy {acc:.4f}" if acc is not None else ""
    if auc is not None:
        quality += f", ROC-AUC {auc:.4f}"
    return f"""## Simulation at scale (`python -m benchmarks.scale`)

Real `flwr run` with the simulation engine: **{r["clients"]} virtual clients**, task
`{r["task"]}`, {r["rounds"]} rounds, `fraction-train = {r["fraction_train"]}`
({r["sampled_per_round"]} silos trained per round, replies per round:
{r["replies_per_round"]}), `fraction-evaluate = {r["fraction_evaluate"]}`, 1 local epoch,
`client-resources-num-cpus = {r["cpus_per_client"]}`. Machine: {r["machine"]["cpus"]} cores,
{r["machine"]["ram_gib"]:.0f} GiB RAM, load average {r["machine"]["load_before"]:.1f} when
started (shared with other jobs). Run {r["when"]}.

| measure | value |
|---|---:|
| peak RSS, all {r["processes"]} processes summed | {r["peak_rss_mib"]:,.0f} MiB |
| peak PSS, summed (shared pages once) | {r["peak_pss_mib"]:,.0f} MiB |
| largest single process | {r["peak_single_mib"]:,.0f} MiB (`{r["peak_single_process"]}`) |
| seconds per round | {r["seconds_per_round"]:.1f} |
| start-up until round 0 (SuperLink, Ray, roll call of all silos) | {r["startup_seconds"]:.1f} s |
| total wall time | {r["total_seconds"]:.1f} s |

No OOM: {quality}. Memory stays flat because a virtual client is a `Context` in the
SuperLink, not a model; a Ray actor keeps one model object per task and loads each message's weights into it; each
actor process builds only the partitions of the silos it serves, on demand
(`tasks.partitioning.LazyPartitions`: building all 1 000 IID partitions eagerly took
~17 s per process with flwr-datasets); the server holds one global model.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--task", default="fraud")
    parser.add_argument("--fraction-train", type=float, default=0.05)
    parser.add_argument("--fraction-evaluate", type=float, default=0.02)
    parser.add_argument("--min-train", type=int, default=2)
    parser.add_argument("--cpus", type=float, default=1, help="client-resources-num-cpus")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--json", type=Path, default=Path("docs/efficiency-scale.json"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    args.load_before = os.getloadavg()[0]
    result = run_scale(args)
    print(json.dumps({k: v for k, v in result.items() if k != "round_times"}, indent=1))
    if not args.no_write:
        write_section("scale", markdown(result), args.out)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
