"""Measurements of ``benchmarks.overhead`` for one checkout of the project.

Run as a script with the checkout as working directory (``benchmarks.overhead`` does it,
for this tree and for ``--before REV``'s temporary git worktree)::

    cd <checkout> && PYTHONPATH=<checkout> python <this file> --rounds 4 --out result.json

Everything it imports from the project (``fl_app``, ``tasks``) then comes from that
checkout, and so do the processes ``flwr run`` starts (they inherit ``PYTHONPATH``). It
uses only APIs that older revisions have too (``run_federation(grid, cfg, extra_sinks)``,
``InProcessGrid``, ``run_simulation``, ``Task.load_partition/train/evaluate``), and
derives the per-round wall time from the run's audit log (every revision writes a
``checkpoint`` entry, with its time, at the end of every round, round 0 included), so
both revisions are measured the same way.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

if __name__ == "__main__":  # the checkout (cwd), not this file's directory, comes first
    sys.path[0] = os.getcwd()

SILOS = 10

#: name → (run-config overrides, extra federation config); "flower-defaults" is Flower's
#: own behaviour (3 s reply polling, 2 CPUs per ClientApp → 1 Ray actor on 2 cores).
SIM_VARIANTS = {
    "flower-defaults": ({"sampling.reply-poll-interval": 0.0}, {"client-resources-num-cpus": 2}),
    "prompt-polling+2-actors": (
        {"sampling.reply-poll-interval": 0.02},
        {"client-resources-num-cpus": 1},
    ),
    "prompt-polling": ({"sampling.reply-poll-interval": 0.02}, {"client-resources-num-cpus": 2}),
}


def _cfg(rounds: int, run_dir: str = "outputs"):
    from fl_app.config import RunConfig

    return RunConfig(
        num_server_rounds=rounds,
        sampling={"min-available-nodes": SILOS},
        output={"run-dir": run_dir},
    )


def direct_rounds(rounds: int) -> tuple[list[float], list[float]]:
    """Without Flower, per round: ``(wall, silo phases)`` seconds. Wall = every silo's
    training, averaging, server evaluation and every silo's evaluation; silo phases =
    the same without the averaging and server evaluation."""
    import torch

    from fl_core.seeding import derive_seed, seed_everything
    from tasks import get_task

    torch.set_num_threads(1)
    cfg = _cfg(rounds)
    task = get_task(cfg.task)
    seed_everything(derive_seed(cfg.seed, "init"))
    model = task.build_model()
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    test = task.load_test(cfg.data, cfg.seed)
    walls, phases = [], []
    for rnd in range(1, rounds + 1):
        start = time.perf_counter()
        states, weights = [], []
        for pid in range(SILOS):
            part = task.load_partition(pid, SILOS, cfg.data, cfg.seed)
            model.load_state_dict(global_state)
            generator = seed_everything(derive_seed(cfg.seed, "train", pid, rnd))
            task.train(model, part.train, cfg.training, generator=generator)
            states.append({k: v.clone() for k, v in model.state_dict().items()})
            weights.append(len(part.train))
        trained = time.perf_counter()
        total = sum(weights)
        global_state = {
            k: sum(w * s[k] for w, s in zip(weights, states, strict=True)) / total
            for k in global_state
        }
        model.load_state_dict(global_state)
        task.evaluate(model, test)  # server-side evaluation (between the phases)
        evaluate_start = time.perf_counter()
        for pid in range(SILOS):
            task.evaluate(model, task.load_partition(pid, SILOS, cfg.data, cfg.seed).val)
        end = time.perf_counter()
        walls.append(end - start)
        phases.append((trained - start) + (end - evaluate_start))
    return walls, phases


def phase_seconds(metrics: list[dict]) -> list[float]:
    """``train-seconds + evaluate-seconds`` of every round (the app logs both: wall time
    from handing a phase's instructions to Flower until its replies are back)."""
    train = {m["round"]: m["train-seconds"] for m in metrics if m["phase"] == "train"}
    evaluate = {m["round"]: m["evaluate-seconds"] for m in metrics if m["phase"] == "evaluate"}
    return [train[r] + evaluate.get(r, 0.0) for r in sorted(train)]


def audit_round_seconds(audit_path: Path) -> list[float]:
    """Wall seconds of rounds 1…n from the audit log: the time between the ``checkpoint``
    entries of consecutive rounds (written at the very end of a round: after both silo
    phases, aggregation, server evaluation and the checkpoint itself)."""
    stamps: dict[int, datetime] = {}
    for line in audit_path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line) if line.strip() else {}
        if entry.get("event") == "checkpoint":
            stamps[int(entry["round"])] = datetime.fromisoformat(entry["time"])
    rounds = sorted(stamps)
    return [(stamps[r] - stamps[p]).total_seconds() for p, r in itertools.pairwise(rounds)]


def logged_round_seconds(metrics: list[dict]) -> list[float] | None:
    """The ``round-seconds`` the app logs on its server rows (revisions that have it)."""
    rows = [m for m in metrics if m["phase"] == "server" and m.get("round", 0) > 0]
    if not rows or any("round-seconds" not in m for m in rows):
        return None
    return [m["round-seconds"] for m in sorted(rows, key=lambda m: m["round"])]


def _row(run_dir: Path, metrics: list[dict], total: float) -> dict:
    return {
        "wall": audit_round_seconds(run_dir / "audit.jsonl"),
        "phases": phase_seconds(metrics),
        "logged-round-seconds": logged_round_seconds(metrics),
        "total": total,
        "final-accuracy": next(
            (m["accuracy"] for m in reversed(metrics) if m["phase"] == "server"), None
        ),
    }


def inprocess_rounds(rounds: int) -> dict:
    """An in-process federation (the real ServerApp body and ClientApp, no transport)."""
    import torch

    from fl_app.client_app import app
    from fl_app.federation import run_federation
    from fl_app.inprocess import InProcessGrid

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _cfg(rounds, run_dir=tmp)
        start = time.perf_counter()
        _, run_dir = run_federation(InProcessGrid(app, cfg.to_flower(), SILOS), cfg)
        total = time.perf_counter() - start
        return _row(run_dir, json.loads((run_dir / "metrics.json").read_text()), total)


def simulation_rounds(rounds: int, variant: str) -> dict:
    """``flwr run`` with the simulation engine (its own FLWR_HOME, stopped afterwards)."""
    from fl_app.local_run import run_simulation

    overrides, federation = SIM_VARIANTS[variant]
    with tempfile.TemporaryDirectory() as tmp:  # outlives the run: its audit log is read
        start = time.perf_counter()
        run = run_simulation(
            {"num-server-rounds": rounds, "sampling.min-available-nodes": SILOS, **overrides},
            num_supernodes=SILOS,
            run_dir=Path(tmp),
            federation_config=federation,
        )
        total = time.perf_counter() - start
        if not run.ok or len([m for m in run.metrics if m["phase"] == "server"]) <= rounds:
            raise RuntimeError(f"flwr run failed ({run.status}):\n{run.output[-3000:]}")
        return _row(run.run_dir, run.metrics, total)


def plain_flower_rounds(rounds: int, variant: str, app_dir: Path) -> dict:
    """``flwr run`` of the plain Flower app at ``app_dir`` (benchmarks/plain_flower_app:
    Flower's FedAvg and a plain ClientApp doing the same training, evaluation and server
    evaluation) with ``variant``'s federation settings. Its wall per round is the
    ``round-seconds`` it logs: end of one server evaluation to the end of the next, as
    our audit-log figure."""
    from fl_app.local_run import run_simulation

    _, federation = SIM_VARIANTS[variant]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = run_simulation(
            {"num-server-rounds": rounds, "sampling.min-available-nodes": SILOS},
            num_supernodes=SILOS,
            run_dir=Path(tmp),
            federation_config=federation,
            project_dir=app_dir,
        )
        total = time.perf_counter() - start
        server = [m for m in run.metrics if m["phase"] == "server"]
        if not run.ok or len(server) <= rounds:
            raise RuntimeError(f"plain Flower run failed ({run.status}):\n{run.output[-3000:]}")
        return {
            "wall": [m["round-seconds"] for m in server if m["round"] > 0],
            "phases": phase_seconds(run.metrics),
            "total": total,
            "final-accuracy": server[-1]["accuracy"],
        }


def mean_row(runs: list[dict]) -> dict:
    """Repeated runs of one mode as one row: per-round means, total and accuracy of each."""
    if len(runs) == 1:
        return runs[0]
    return {
        "wall": [statistics.fmean(r) for r in zip(*(x["wall"] for x in runs), strict=True)],
        "phases": [statistics.fmean(r) for r in zip(*(x["phases"] for x in runs), strict=True)],
        "total": statistics.fmean(x["total"] for x in runs),
        "final-accuracy": runs[-1].get("final-accuracy"),
        "repeats": len(runs),
    }


def measure(
    rounds: int, variants: list[str], plain_app: Path | None = None, repeats: int = 1
) -> dict[str, dict]:
    """Every mode's rows, keyed ``direct``, ``in-process``, ``simulation / <variant>`` and,
    with ``plain_app``, ``plain Flower / <variant>``: per variant, the plain app and ours
    alternate ``repeats`` times (plain, ours, ours, plain, …) so that a drift in the
    machine's load hits both alike; repeated runs are averaged round by round."""
    logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.getLogger("fedsilo").setLevel(logging.WARNING)
    rows: dict[str, dict] = {}
    start = time.perf_counter()
    walls, phases = direct_rounds(rounds)
    rows["direct"] = {"wall": walls, "phases": phases, "total": time.perf_counter() - start}
    print(f"direct: {[round(t, 2) for t in walls]}", file=sys.stderr, flush=True)
    rows["in-process"] = inprocess_rounds(rounds)
    print(f"in-process: {[round(t, 2) for t in rows['in-process']['wall']]}", file=sys.stderr)
    for variant in variants:
        runs: dict[str, list[dict]] = {"simulation": [], "plain Flower": []}
        for repeat in range(repeats):
            order = ["plain Flower", "simulation"][:: 1 if repeat % 2 == 0 else -1]
            for mode in order:
                if mode == "simulation":
                    row = simulation_rounds(rounds, variant)
                elif plain_app is not None:
                    row = plain_flower_rounds(rounds, variant, plain_app)
                else:
                    continue
                runs[mode].append(row)
                print(f"{mode} {variant}: {[round(t, 2) for t in row['wall']]}", file=sys.stderr)
        for mode, done in runs.items():
            if done:
                rows[f"{mode} / {variant}"] = mean_row(done)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="overhead measurements of this checkout")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--variants", nargs="*", default=[], choices=SIM_VARIANTS)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plain-app", type=Path, help="also run this plain Flower app")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--features", action="store_true", help="time each feature")
    args = parser.parse_args(argv)
    rows = measure(args.rounds, args.variants, args.plain_app, args.repeats)
    saved: dict = {"cwd": os.getcwd(), "rows": rows}
    if args.features:
        from benchmarks.feature_costs import measure_features

        saved["features"] = measure_features(args.rounds, SILOS)
    args.out.write_text(json.dumps(saved, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
