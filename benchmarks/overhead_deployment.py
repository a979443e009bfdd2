"""Seconds per round on the real deployment runtime: Flower's default SuperNode against the
warm one (adapters/supernode), side by side in one invocation.

``python -m benchmarks.overhead --runtime deployment`` (or ``python -m
benchmarks.overhead_deployment``) runs the same federation through the local backend
(:func:`adapters.local.run.run_local`: one ``flower-superlink``, one SuperNode per silo,
``flwr run`` on loopback) once per mode, alternating modes when ``--repeats`` > 1:

* **subprocess** — ``supernode.executor: subprocess``: Flower's default. One
  ``flwr-clientapp`` process per message, the SuperNode's 3 s idle poll, SuperExec's 1 s
  task poll, the ServerApp's 3 s reply loop.
* **warm** — ``supernode.executor: warm`` (the default of the local backend, the silo kit
  and the AzureML jobs): ClientApps forked from a pre-imported zygote, prompt polling on
  the SuperNode, its SuperExec and the ServerApp (``sampling.reply-poll-interval``).

Digits, 5 silos, FedAvg, 1 local epoch, every silo trains and evaluates every round,
server-side evaluation and checkpoint after every round. Per round: the app's
``round-seconds`` (round start → checkpoint written), averaged over rounds 2…n (round 1
pays the first imports and the FAB install); and ``train-seconds`` / ``evaluate-seconds``
(a phase's instructions handed to Flower → replies back). The machine's load average is
recorded before every run: on a shared machine compare modes within one invocation.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks import harness
from benchmarks.efficiency_doc import DOC, write_section
from benchmarks.harness import Column, Table

SILOS = 5
MODES = ("subprocess", "warm", "warm-no-telemetry")
#: Mode → (``supernode.executor``, environment of the run). ``warm-no-telemetry`` is the warm
#: SuperNode with Flower's documented telemetry opt-out (``FLWR_TELEMETRY_ENABLED=0``): every
#: ClientApp process, cold or forked, otherwise posts a usage event over HTTPS (a new TLS
#: context with the CA bundle loaded; offline, a failed connection too).
MODE_SETUP: dict[str, tuple[str, dict[str, str]]] = {
    "subprocess": ("subprocess", {}),
    "warm": ("warm", {}),
    "warm-no-telemetry": ("warm", {"FLWR_TELEMETRY_ENABLED": "0"}),
}
SECTION = "overhead-deployment"


def spec_text(mode: str, rounds: int, silos: int = SILOS, local_epochs: int = 1) -> str:
    """The federation spec every mode runs (only ``supernode.executor`` differs)."""
    executor = MODE_SETUP[mode][0]
    from fl_app.local_run import PROJECT_DIR

    entries = "\n".join(f"  - {{name: silo-{i}, compute: local}}" for i in range(silos))
    return f"""
name: overhead-{mode}
orchestrator: {{subscription_id: s, resource_group: r, workspace: w, compute: local,
               code: {PROJECT_DIR}}}
silos:
{entries}
task: digits
strategy: fedavg
run_config: {{num-server-rounds: {rounds}, training.local-epochs: {local_epochs}, seed: 5,
             sampling.min-available-nodes: {silos}}}
supernode: {{executor: {executor}}}
"""


#: Roles of the run's processes, in the order the CPU table lists them.
ROLES = ("SuperLink", "ServerApp", "SuperNode", "SuperExec", "ClientApp zygote",
         "ClientApp tasks", "flwr CLI", "other")  # fmt: skip


def role_of(cmdline: Sequence[str], parent_role: str | None = None) -> str:
    """Which part of the deployment runtime a process is, from its command line (and its
    parent's role: a warm SuperNode's tasks are forks of the zygote, same command line)."""
    text = " ".join(cmdline)
    if parent_role == "ClientApp zygote":
        return "ClientApp tasks"
    if "flwr-serverapp" in text:
        return "ServerApp"
    if "flwr-clientapp" in text:
        return "ClientApp tasks"
    if "flower-superlink" in text or ("flower-superexec" in text and "serverapp" in text):
        return "SuperLink"  # Flower's SuperExec for the ServerApp is the SuperLink's side
    if "adapters.supernode zygote" in text:
        return "ClientApp zygote"
    if "adapters.supernode superexec" in text or "flower-superexec" in text:
        return "SuperExec"
    if "flower-supernode" in text or "adapters.supernode run" in text:
        return "SuperNode"
    if any(Path(arg).name == "flwr" for arg in cmdline[:2]):  # the program, or its script
        return "flwr CLI"
    return "other"


def cpu_by_role(
    start: Mapping[int, tuple[str, float, float]], end: Mapping[int, tuple[str, float, float]]
) -> dict[str, float]:
    """CPU seconds per role between two snapshots ``pid → (role, own CPU s, reaped
    children's CPU s)``: own CPU goes to the process's role; reaped children's CPU is kept
    only for the warm zygote, whose children are its forked tasks (it reaps each at once, so
    a short task is counted whole), and goes to ClientApp tasks. A process absent from
    ``start`` counts from zero."""
    out = dict.fromkeys(ROLES, 0.0)
    for pid, (role, own, reaped) in end.items():
        _, own0, reaped0 = start.get(pid, (role, 0.0, 0.0))
        out[role] += max(0.0, own - own0)
        out["ClientApp tasks"] += max(0.0, reaped - reaped0)
    return out


class CpuSampler:
    """Samples the CPU time of every process under this one (psutil, every ``interval`` s)
    and snapshots it when the run's ``metrics.json`` first shows round ``first`` and round
    ``last`` finished (the server row): the CPU of rounds ``first + 1 … last`` by role.

    A process keeps its last sampled figures after it exits (Flower's ``flwr-clientapp``
    processes linger as zombies until reaped, so theirs are final); the warm zygote's
    forked tasks are counted whole through the zygote's reaped-children time instead. CPU a
    process spends after its last sample is missed (at most ``interval`` s each)."""

    def __init__(self, run_dir: Path, first: int, last: int, interval: float = 0.1) -> None:
        import psutil

        self._psutil, self._me = psutil, psutil.Process()
        self.run_dir, self.first, self.last, self.interval = run_dir, first, last, interval
        self.snapshots: dict[int, dict[int, tuple[str, float, float]]] = {}
        self._roles: dict[int, str] = {}
        self._seen: dict[int, tuple[str, float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _snapshot(self) -> dict[int, tuple[str, float, float]]:
        for proc in self._me.children(recursive=True):
            try:
                with proc.oneshot():
                    if proc.pid not in self._roles:
                        parent = self._roles.get(proc.ppid())
                        self._roles[proc.pid] = role_of(proc.cmdline(), parent)
                    role = self._roles[proc.pid]
                    if role == "ClientApp tasks" and self._roles.get(proc.ppid()) == (
                        "ClientApp zygote"
                    ):
                        continue  # counted whole by the zygote that reaps it
                    t = proc.cpu_times()
                    reaped = t.children_user + t.children_system
                    zygote = role == "ClientApp zygote"
                    self._seen[proc.pid] = (role, t.user + t.system, reaped if zygote else 0.0)
            except self._psutil.Error:
                continue
        return dict(self._seen)

    def _last_round(self) -> int:
        rounds = [0]
        for path in self.run_dir.glob("**/metrics.json"):
            try:
                rows = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            rounds += [r["round"] for r in rows if r.get("phase") == "server"]
        return max(rounds)

    def _loop(self) -> None:
        checks = 0
        while not self._stop.wait(self.interval):
            snap = self._snapshot()
            checks += 1
            if checks % 5:
                continue
            done = self._last_round()
            for mark in (self.first, self.last):
                if done >= mark and mark not in self.snapshots:
                    self.snapshots[mark] = snap
            if self.last in self.snapshots:
                return

    def per_round(self) -> dict[str, float] | None:
        """CPU seconds per round by role over rounds ``first + 1 … last`` (``None`` if the
        run did not reach both marks)."""
        if self.first not in self.snapshots or self.last not in self.snapshots:
            return None
        total = cpu_by_role(self.snapshots[self.first], self.snapshots[self.last])
        return {role: value / (self.last - self.first) for role, value in total.items()}


def measure(mode: str, rounds: int, run_dir: Path) -> dict:
    """One run of the federation in ``mode``; per-round seconds and the final model."""
    from adapters.azureml.spec import parse_spec
    from adapters.local.run import run_local

    load = harness.load_average(None)
    clock = harness.Stopwatch()
    with harness.environ(**MODE_SETUP[mode][1]), CpuSampler(run_dir, 1, rounds) as sampler:
        run = run_local(parse_spec(spec_text(mode, rounds)), run_dir=run_dir, timeout=3600)
    total = clock.seconds
    if not run.ok:
        raise RuntimeError(f"{mode}: the run failed ({run.status}):\n{run.output[-3000:]}")
    rows = run.metrics

    def per_round(phase: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["phase"] == phase and key in r]

    server = [r for r in rows if r["phase"] == "server" and r["round"] > 0]
    return {
        "mode": mode,
        "load": load,
        "total": total,
        "round": per_round("server", "round-seconds"),
        "train": per_round("train", "train-seconds"),
        "evaluate": per_round("evaluate", "evaluate-seconds"),
        "accuracy": server[-1]["accuracy"],
        "cpu": sampler.per_round(),
        "model": str(run.run_dir / "model.pt"),
    }


def _mean(values: list[float]) -> float:
    return statistics.fmean(values[1:] or values)


def markdown(result: dict) -> str:
    """The docs section: one row per run, then the ratio of the modes' means."""
    rows = result["runs"]
    table = Table(
        ["run", "mode", Column("load avg", ".1f"), Column("s / round (rounds 2…n)", ".2f"),
         Column("train s", ".2f"), Column("evaluate s", ".2f"), "s per round, rounds 1…n",
         Column("accuracy", ".4f")],
        align="rlrrrrlr",
    )  # fmt: skip
    for i, row in enumerate(rows, 1):
        each = ", ".join(f"{t:.2f}" for t in row["round"])
        table.add(
            i, row["mode"], row["load"], _mean(row["round"]), _mean(row["train"]),
            _mean(row["evaluate"]), each, row["accuracy"],
        )  # fmt: skip
    means = {
        mode: statistics.fmean(_mean(r["round"]) for r in rows if r["mode"] == mode)
        for mode in MODES
        if any(r["mode"] == mode for r in rows)
    }
    summary = ", ".join(f"{mode} {value:.2f} s" for mode, value in means.items())
    ratio = (
        f" (warm **{means['subprocess'] / means['warm']:.1f}×** faster)"
        if {"subprocess", "warm"} <= means.keys()
        else ""
    )
    same = "identical" if result.get("identical") else "NOT identical"
    cpu = cpu_markdown(rows)
    return f"""### Deployment round cost (`python -m benchmarks.overhead --runtime deployment`)

Digits, {SILOS} silos (SuperNodes) on loopback through the local backend, FedAvg, 1 local
epoch, every silo trains and evaluates every round, {result["rounds"]} rounds, modes
alternating; {harness.cpu_count()} cores, run {result["when"]}. Mean seconds per round over
rounds 2…n: {summary}{ratio}. Final models of the runs: {same} (bit for bit).

{table.markdown()}
{cpu}"""


def cpu_markdown(rows: list[dict]) -> str:
    """Where the CPU of a round goes, per run and process role (empty if not sampled)."""
    sampled = [(i, r) for i, r in enumerate(rows, 1) if r.get("cpu")]
    if not sampled:
        return ""
    roles = [role for role in ROLES if any(r["cpu"][role] >= 0.005 for _, r in sampled)]
    table = Table(
        ["run", "mode", *(Column(role, ".2f") for role in roles), Column("all", ".2f"),
         Column("cores busy", ".2f")],
        align="rl" + "r" * (len(roles) + 2),
    )  # fmt: skip
    for i, row in sampled:
        total = sum(row["cpu"].values())
        table.add(i, row["mode"], *(row["cpu"][role] for role in roles), total,
                  total / _mean(row["round"]))  # fmt: skip
    return f"""
CPU seconds per round (rounds 2…n) by process, sampled with psutil every 0.1 s over the
run's process tree (a warm SuperNode's forked tasks counted whole through the zygote that
reaps them; *cores busy* = CPU seconds / wall seconds of a round, out of
{harness.cpu_count()}):

{table.markdown()}
"""


def models_identical(paths: list[str]) -> bool:
    """Whether every run ended with the bit-identical model."""
    import torch

    states = [torch.load(p) for p in paths]
    return all(
        s.keys() == states[0].keys() and all(torch.equal(s[k], states[0][k]) for k in s)
        for s in states[1:]
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point (``--runtime deployment`` of :mod:`benchmarks.overhead`)."""
    parser = harness.parser(
        __doc__, rounds=4, repeats=harness.opt(1, "runs per mode, alternating"), out=DOC,
        json=Path("docs/efficiency-deployment.json"), no_write="print only",
    )  # fmt: skip
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                        help="run in this order (warm-no-telemetry: the warm SuperNode with "
                        "FLWR_TELEMETRY_ENABLED=0)")  # fmt: skip
    args = parser.parse_args(argv)
    outputs = [] if args.no_write else [args.out, args.json]
    code = harness.start("overhead_deployment", argv, outputs, allow_dirty=args.allow_dirty).code
    if args.rounds < 2:
        parser.error(f"--rounds must be ≥ 2 (round 1 is not averaged), got {args.rounds}")
    result = {
        "rounds": args.rounds,
        "when": harness.utc_now(),
        "runs": [],
        "code": code.to_json(),
    }
    with tempfile.TemporaryDirectory(prefix="fedsilo-overhead-deploy-") as tmp:
        for i in range(args.repeats):
            for mode in args.modes:
                row = measure(mode, args.rounds, Path(tmp) / f"{mode}-{i}")
                print(f"{mode}: {row['round']} (load {row['load']:.1f})", file=sys.stderr)
                result["runs"].append(row)
        result["identical"] = models_identical([r["model"] for r in result["runs"]])
    for row in result["runs"]:
        row.pop("model")
    text = markdown(result)
    print(text)
    if not args.no_write:
        write_section(SECTION, text, args.out, code)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
