"""Participant selection: time to a target accuracy and final accuracy per policy.

Setup (issue #18): digits, 20 silos, Dirichlet α = 0.3 label skew, silo speeds spread 10×
(``simulation.speed-spread``), 3 silos with 60 % noisy labels (``simulation.noisy-silos``),
5 silos (25 %) train per round. Each policy (``selection.policy``: random, availability,
power-of-choice, oort) runs over ≥ 3 seeds, each variant with and without quality-aware
weights when the app has them (``contribution.quality-weights``; for oort and
power-of-choice also ``selection.quality-aware``: the contribution scores scale their
loss-based utility).

Measured per run, from the run's own metrics:

* **simulated wall time**: the sum over rounds of ``round-sim-seconds``, the slowest chosen
  silo's simulated seconds (``simulation.seconds-per-example`` × examples × epochs ×
  slowness) — the time a synchronous round waits for its slowest silo;
* **time to target**: that sum at the first round whose server test accuracy reaches
  ``--target`` (– if never within the rounds);
* **final accuracy**: server test accuracy after the last round.

Ratios are against random selection in the same run of this benchmark. Writes
docs/selection.md (the generated part), docs/selection.json and docs/selection.png::

    python -m benchmarks.selection            # 4 policies (× quality weights) × 3 seeds
    python -m benchmarks.selection --quick    # 2 seeds, 10 rounds, no file written
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import Column, Table, Versus, mean_std

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "selection.md"
POLICIES = ("random", "availability", "power-of-choice", "oort")
SILOS = 20
SETUP = {
    "task": "digits",
    "data.partitioner": "dirichlet",
    "data.dirichlet-alpha": 0.3,
    "simulation.speed-spread": 10.0,
    "simulation.noisy-silos": 3,
    "simulation.label-noise": 0.6,
    "sampling.fraction-train": 0.25,
    "sampling.min-train-nodes": 1,
    "sampling.min-available-nodes": SILOS,
    "sampling.fraction-evaluate": 0.0,
    "sampling.min-evaluate-nodes": 0,
}
#: Quality-aware weights, when the app has them (else the variant is left out).
QUALITY = {"contribution.method": "loo", "contribution.quality-weights": True}
MARK_START, MARK_END = "<!-- selection:begin -->", "<!-- selection:end -->"


def variants() -> list[tuple[str, bool, dict[str, Any]]]:
    """``(policy, quality, overrides)`` of every variant this app supports."""
    from fl_app.config import KEYS
    from strategies.selection import POLICIES as REGISTERED

    quality = all(k in KEYS for k in QUALITY)
    out = []
    for policy in POLICIES:
        out.append((policy, False, {"selection.policy": policy}))
        if quality:
            aware = "selection.quality-aware" in KEYS and REGISTERED[policy].quality_aware
            extra = {"selection.quality-aware": True} if aware else {}
            out.append((policy, True, {"selection.policy": policy, **QUALITY, **extra}))
    return out


def run_one(item: tuple[str, bool, dict[str, Any], int, int]) -> dict[str, Any]:
    """One federation (in process); its per-round accuracy and simulated seconds."""
    from fl_app.client_app import app as client_app
    from fl_app.config import RunConfig
    from fl_app.federation import run_federation
    from fl_app.inprocess import InProcessGrid

    policy, quality, overrides, seed, rounds = item
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig.from_flower(
            {**SETUP, **overrides, "seed": seed, "num-server-rounds": rounds,
             "output.run-dir": tmp}
        )  # fmt: skip
        _, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), SILOS), cfg)
        rows = json.loads((run_dir / "metrics.json").read_text())
    accuracy = {r["round"]: r["accuracy"] for r in rows if r["phase"] == "server"}
    seconds = {r["round"]: r.get("round-sim-seconds", 0.0) for r in rows if r["phase"] == "train"}
    return {
        "policy": policy,
        "quality": quality,
        "seed": seed,
        "accuracy": [accuracy[r] for r in sorted(accuracy)],  # round 0 = initial model
        "sim-seconds": [seconds.get(r, 0.0) for r in range(1, rounds + 1)],
    }


def time_to_target(run: dict[str, Any], target: float) -> float | None:
    """Simulated seconds until the server accuracy first reaches ``target``."""
    elapsed = 0.0
    for acc, seconds in zip(run["accuracy"][1:], run["sim-seconds"], strict=True):
        elapsed += seconds
        if acc >= target:
            return elapsed
    return None


def summary(runs: list[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """Per variant: runs, time to target (mean ± std over the runs that reached it), final
    accuracy and total simulated seconds."""
    out = []
    keys = sorted({(r["policy"], r["quality"]) for r in runs},
                  key=lambda k: (POLICIES.index(k[0]), k[1]))  # fmt: skip
    for policy, quality in keys:
        mine = [r for r in runs if r["policy"] == policy and r["quality"] == quality]
        times = [t for r in mine if (t := time_to_target(r, target)) is not None]
        out.append({
            "policy": policy,
            "quality": quality,
            "seeds": [r["seed"] for r in mine],
            "reached": len(times),
            "time-to-target": times,
            "final-accuracy": [r["accuracy"][-1] for r in mine],
            "total-sim-seconds": [sum(r["sim-seconds"]) for r in mine],
        })  # fmt: skip
    return out


def table(rows: list[dict[str, Any]]) -> Table:
    t = Table(
        ["policy", "quality-aware", "reached target",
         Column("time to target [sim s]", ".1f"),
         Column("÷ random", versus=Versus("time to target [sim s]", row="random",
                                          label="policy", group="quality-aware", fmt=".2f",
                                          invert=True)),
         Column("final accuracy", ".4f"), Column("total [sim s]", ".1f")],
        align="llrrrrr",
    )  # fmt: skip
    for r in rows:
        n = len(r["seeds"])
        t.add(
            r["policy"], "yes" if r["quality"] else "no", f"{r['reached']}/{n}",
            r["time-to-target"] or None, r["final-accuracy"], r["total-sim-seconds"],
        )  # fmt: skip
    return t


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = dict(zip(POLICIES, ("tab:grey", "tab:blue", "tab:orange", "tab:green"), strict=True))
    for policy, quality in sorted({(r["policy"], r["quality"]) for r in runs}):
        mine = [r for r in runs if r["policy"] == policy and r["quality"] == quality]
        for i, r in enumerate(mine):
            t = [0.0]
            for s in r["sim-seconds"]:
                t.append(t[-1] + s)
            label = f"{policy}{' + quality' if quality else ''}" if i == 0 else None
            ax.plot(t, r["accuracy"], color=colours[policy], alpha=0.7,
                    linestyle="--" if quality else "-", label=label)  # fmt: skip
    ax.set_xlabel("simulated wall time [s]")
    ax.set_ylabel("server test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(report: dict[str, Any]) -> str:
    rows = report["summary"]
    target = report["target"]
    best = {}
    for r in rows:
        if r["time-to-target"] and len(r["time-to-target"]) == len(r["seeds"]):
            best[(r["policy"], r["quality"])] = mean_std(r["time-to-target"])[0]
    base = best.get(("random", False))
    lines = [
        MARK_START,
        f"{report['header']}; {report['seconds']:.0f} s wall on {report['machine']}, "
        f"1-minute load average {report['load-start']} at the start. Raw numbers: "
        "[selection.json](selection.json).",
        "",
        f"Setup: {report['setup-text']}. Target: server test accuracy ≥ {target}. "
        f"{len(report['seeds'])} seeds ({', '.join(map(str, report['seeds']))}), "
        f"{report['rounds']} rounds. Cells are mean ± std over the seeds (time to target: "
        "over the seeds that reached it).",
        "",
        table(rows).markdown(),
        "",
        "![accuracy against simulated wall time](selection.png)",
        "",
    ]
    final = {(r["policy"], r["quality"]): mean_std(r["final-accuracy"])[0] for r in rows}
    if base:
        ratios = {k: base / v for k, v in best.items() if k[0] != "random"}
        if ratios:
            k, r = max(ratios.items(), key=lambda kv: kv[1])
            name = k[0] + (" quality-aware" if k[1] else "")
            equal = final[k] >= final[("random", False)]
            goal = "meets" if r >= 1.5 and equal else "does not meet"
            line = (
                f"**Goal (≥ 1.5× less simulated time to target than random, at equal or better "
                f"final accuracy):** the fastest variant, {name}, reaches it {r:.2f}× sooner "
                f"than random, at final accuracy {final[k]:.4f} against random's "
                f"{final[('random', False)]:.4f}: it {goal} the goal."
            )
            if (quality_base := best.get(("random", True))) and k[1]:
                line += (
                    f" Against random with quality weights (the same aggregation), it is "
                    f"{quality_base / best[k]:.2f}× sooner, at {final[k]:.4f} against "
                    f"{final[('random', True)]:.4f}."
                )
            lines.append(line)
    lines.append(MARK_END)
    return "\n".join(lines)


def write_doc(text: str, path: Path) -> None:
    harness.write_between_markers(path, text, MARK_START, MARK_END, "Participant selection")


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(
        __doc__,
        quick="2 seeds, 10 rounds; writes nothing unless --out",
        rounds=harness.opt(30, "federated rounds (default 30)"),
        seeds=harness.opt([1, 2, 3], "seeds (default 1 2 3)"),
        workers=harness.opt(2, "worker processes (default 2)"),
        out=harness.opt(None, "the doc to write (default docs/selection.md)"),
        render_only="rebuild the doc from its saved JSON (no federation is run)",
    )
    parser.add_argument("--target", type=float, default=0.85, help="target accuracy (0.85)")
    args = parser.parse_args(argv)
    out = harness.resolve_out(args, DOC, parser)
    json_path = (out or DOC).with_suffix(".json")
    if args.render_only:
        report = json.loads(json_path.read_text())
        write_doc(render(report) + "\n\n" + harness.rerender_note("selection"), out or DOC)
        return
    if args.quick:
        args.seeds, args.rounds = args.seeds[:2], min(args.rounds, 10)
    session = harness.start("selection", argv, [out, json_path] if out else None,
                            allow_dirty=args.allow_dirty)  # fmt: skip
    harness.log_to_console()
    items = [(p, q, o, s, args.rounds) for p, q, o in variants() for s in args.seeds]
    runs = []
    for item, result in harness.run_workers(
        run_one, items, workers=args.workers,
        initializer=harness.quiet_worker, inline=None, progress=args.progress,
    ):  # fmt: skip
        logging.info("%s quality=%s seed=%d: final %.4f, %.1f sim s", item[0], item[1],
                     item[3], result["accuracy"][-1], sum(result["sim-seconds"]))  # fmt: skip
        runs.append(result)
    runs.sort(key=lambda r: (POLICIES.index(r["policy"]), r["quality"], r["seed"]))
    report = {
        **session.report(),
        "seeds": args.seeds,
        "rounds": args.rounds,
        "target": args.target,
        "setup": SETUP,
        "setup-text": (
            f"task digits, {SILOS} silos, Dirichlet α = 0.3, speeds spread 10×, "
            "3 silos with 60 % noisy labels, 25 % of the silos per round"
        ),
        "runs": runs,
        "summary": summary(runs, args.target),
    }
    print(table(report["summary"]).text())
    if out is None:
        return
    json_path.write_text(json.dumps(harness.json_safe(report), indent=1))
    plot(runs, out.with_suffix(".png"))
    write_doc(render(report), out)
    logging.info("wrote %s, %s and %s", out, json_path, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
