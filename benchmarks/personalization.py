"""Personalisation and fairness: mean and worst silo of global and personalised models.

Setup (issue #19): digits, fraud and NER, 10 silos, Dirichlet label skew α = 0.1 and
α = 1.0, ≥ 3 seeds. Compared: global FedAvg, FedProx and q-FedAvg (their global model) and
FedPer, FedRep, FedBN, Ditto and local fine-tuning (each silo's personal model; FedBN on
the task's BatchNorm variant, where there is one: digits → ``digits-bn``).

Measured per run, from its own ``metrics.json`` (the last round's ``evaluate`` row): the
unweighted mean over silos and the worst silo of the task's main metric (``accuracy``;
NER: ``entity-f1``) on each silo's own validation split, for the model the method offers
(global or personal); personal methods also keep the global model's figures. Writes the
generated part of docs/personalization.md, docs/personalization.json and
docs/personalization.png::

    python -m benchmarks.personalization             # every cell, 3 seeds
    python -m benchmarks.personalization --quick     # digits α = 0.1 only, 1 seed, 5 rounds
    python -m benchmarks.personalization --tasks ner --rounds 10 --merge
    python -m benchmarks.personalization --render-only

Every task runs with its ``recommended`` run config (``tasks.base.Task``: e.g. NER's
learning rate). ``--merge`` adds this invocation's runs to the saved JSON (replacing the
runs it redoes) and renders the doc from all of them; each invocation is listed in the doc
with its command, commit and rounds.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import Column, Table, Versus

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "personalization.md"
TASKS = ("digits", "fraud", "ner")
ALPHAS = (0.1, 1.0)
SILOS = 10
#: Method → run-config overrides; the first is every comparison's baseline.
METHODS: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedprox": {"strategy": "fedprox"},
    "qfedavg": {"strategy": "qfedavg", "server.q": 0.1},
    "fedper": {"personalization.method": "fedper"},
    "fedrep": {"personalization.method": "fedrep"},
    "fedbn": {"personalization.method": "fedbn"},
    "ditto": {"personalization.method": "ditto"},
    "finetune": {"personalization.method": "finetune"},
}
#: FedBN needs a BatchNorm model: the task it runs on instead (no entry: left out).
BN_TASK = {"digits": "digits-bn", "pneumonia": "pneumonia-bn"}
SETUP = {
    "data.partitioner": "dirichlet",
    "training.local-epochs": 1,
    "sampling.min-available-nodes": SILOS,
}
MARK_START, MARK_END = "<!-- personalization:begin -->", "<!-- personalization:end -->"


def cells(tasks, alphas, methods, seeds, rounds) -> list[tuple]:
    """``(task, alpha, method, seed, rounds)`` of every run (FedBN only where the task has
    a BatchNorm variant)."""
    return [
        (task, alpha, method, seed, rounds)
        for task in tasks for alpha in alphas for method in methods for seed in seeds
        if method != "fedbn" or task in BN_TASK
    ]  # fmt: skip


def training_defaults(task: str) -> dict[str, Any]:
    """The task's recommended settings without its choice of server strategy (``strategy``,
    ``server.*``), and ``task-defaults = false`` so it is not applied again: every method is
    compared on the task's training settings, and the baseline really is FedAvg (NER
    recommends FedAvgM)."""
    from tasks import get_task

    recommended = get_task(task).recommended
    kept = {k: v for k, v in recommended.items() if k != "strategy" and not k.startswith("server.")}
    return {**kept, "task-defaults": False}


def run_one(item: tuple) -> dict[str, Any]:
    """One federation (in process): the last round's mean and worst silo, global and
    (for a personalisation method) personal."""
    from fl_app.client_app import app as client_app
    from fl_app.config import RunConfig
    from fl_app.federation import run_federation
    from fl_app.inprocess import InProcessGrid
    from tasks import get_task

    task, alpha, method, seed, rounds = item
    run_task = BN_TASK[task] if method == "fedbn" else task
    metric = get_task(run_task).main_metric
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig.from_flower(
            {**SETUP, **training_defaults(run_task), **METHODS[method], "task": run_task,
             "data.dirichlet-alpha": alpha,
             "seed": seed, "num-server-rounds": rounds, "output.run-dir": tmp}
        )  # fmt: skip
        _, run_dir = run_federation(InProcessGrid(client_app, cfg.to_flower(), SILOS), cfg)
        rows = json.loads((run_dir / "metrics.json").read_text())
        silos = json.loads((run_dir / "silo_metrics.json").read_text())
    last = [r for r in rows if r["phase"] == "evaluate"][-1]
    personal = f"personal-{metric}"

    def stat(name: str, s: str) -> float | None:
        return last.get(f"silo-{name}-{s}")

    offered = personal if stat(personal, "mean") is not None else metric
    return {
        "task": task, "alpha": alpha, "method": method, "seed": seed, "rounds": rounds,
        "metric": metric,
        "model": "personal" if offered == personal else "global",
        "mean": stat(offered, "mean"), "worst": stat(offered, "min"),
        "global-mean": stat(metric, "mean"), "global-worst": stat(metric, "min"),
        "worst-rows": worst_silo_rows(silos, last["round"], offered),
    }  # fmt: skip


def worst_silo_rows(silos: list[dict[str, Any]], server_round: int, metric: str) -> int | None:
    """Validation rows of the silo with the lowest finite ``metric`` in ``server_round``'s
    evaluation (``silo_metrics.json`` rows): how much one of its errors weighs."""
    import math

    scored = [r for r in silos if r["phase"] == "evaluate" and r["round"] == server_round
              and isinstance(r.get(metric), float) and math.isfinite(r[metric])]  # fmt: skip
    if not scored:
        return None
    return int(min(scored, key=lambda r: r[metric])["num-examples"])


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, α, method): the runs' seeds and values (mean ± std when rendered)."""
    out = []
    order = list(METHODS)
    keys = sorted({(r["task"], r["alpha"], r["method"]) for r in runs},
                  key=lambda k: (TASKS.index(k[0]) if k[0] in TASKS else 99, k[1],
                                 order.index(k[2])))  # fmt: skip
    for task, alpha, method in keys:
        mine = [r for r in runs if (r["task"], r["alpha"], r["method"]) == (task, alpha, method)]
        out.append({
            "task": task, "alpha": alpha, "method": method, "model": mine[0]["model"],
            "metric": mine[0]["metric"], "seeds": [r["seed"] for r in mine],
            "rounds": sorted({r["rounds"] for r in mine if r.get("rounds") is not None}),
            **{k: [r.get(k) for r in mine]
               for k in ("mean", "worst", "global-mean", "global-worst", "worst-rows")},
        })  # fmt: skip
    return out


def run_key(run: dict[str, Any]) -> tuple:
    return run["task"], run["alpha"], run["method"], run["seed"]


def merged(base: dict[str, Any], part: dict[str, Any], runs: list[dict[str, Any]]) -> dict:
    """``base`` (a saved report) with this invocation's ``runs`` added, replacing the runs
    it redoes; ``parts`` lists every invocation (header, code, machine, load, seconds,
    rounds) that contributed runs."""
    redone = {run_key(r) for r in runs}
    kept = [r for r in base["runs"] if run_key(r) not in redone]
    for r in kept:  # reports from before per-run rounds: every run had the report's
        r.setdefault("rounds", base.get("rounds"))
    parts = [p for p in parts_of(base) if any(r.get("part") == p["id"] for r in kept)]
    part = {**part, "id": 1 + max((p["id"] for p in parts_of(base)), default=0)}
    all_runs = [*kept, *({**r, "part": part["id"]} for r in runs)]
    return {**part, "parts": [*parts, part], "runs": all_runs, "summary": summary(all_runs)}


def parts_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The invocations a saved report was made of (one, for a report without ``parts``:
    the report itself, its runs tagged as part 0)."""
    if "parts" in report:
        return report["parts"]
    for r in report["runs"]:
        r.setdefault("part", 0)
    keys = ("header", "code", "machine", "load-start", "seconds", "rounds", "seeds")
    return [{"id": 0, **{k: report.get(k) for k in keys}}]


def table(rows: list[dict[str, Any]]) -> Table:
    t = Table(
        ["setting", "method", "model", Column("mean", ".3f"), Column("worst silo", ".3f"),
         Column("worst − fedavg", versus=Versus("worst silo", row="fedavg", label="method",
                                                group="setting", diff=True, fmt="+.3f")),
         Column("global mean", ".3f"), Column("global worst", ".3f"),
         "worst silo's val rows"],
        align="lllrrrrrr",
    )  # fmt: skip
    for r in rows:
        t.add(
            f"{r['task']} α={r['alpha']} ({r['metric']})", r["method"], r["model"],
            r["mean"], r["worst"], r["global-mean"], r["global-worst"],
            ", ".join("–" if n is None else str(n) for n in r.get("worst-rows") or []) or "–",
        )  # fmt: skip
    return t


def _mean(values: list[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return harness.mean_std(data)[0] if data else None


def goal(rows: list[dict[str, Any]], task: str) -> str | None:
    """The issue's goal at α = 0.1 for ``task``: the personalised method with the best
    worst silo, against global FedAvg (≥ 10 points at equal or better mean)."""
    setting = [r for r in rows if r["task"] == task and r["alpha"] == 0.1]
    base = next((r for r in setting if r["method"] == "fedavg"), None)
    personal = [r for r in setting if r["model"] == "personal"]
    if base is None or not personal or _mean(base["worst"]) is None:
        return None
    best = max(personal, key=lambda r: _mean(r["worst"]) or -1.0)
    gain = (_mean(best["worst"]) or 0.0) - _mean(base["worst"])
    mean_ok = (_mean(best["mean"]) or 0.0) >= (_mean(base["mean"]) or 0.0)
    met = "meets" if gain >= 0.10 and mean_ok else "does not meet"
    return (
        f"**{task}, α = 0.1:** the best personalised worst silo is {best['method']}'s, "
        f"{gain * 100:+.1f} points over global FedAvg's, at a mean "
        f"{'equal or better' if mean_ok else 'lower'}: it {met} the goal (≥ +10 points at "
        "equal or better mean)."
    )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(r["task"], r["alpha"]) for r in rows},
                      key=lambda k: (TASKS.index(k[0]) if k[0] in TASKS else 99, k[1]))  # fmt: skip
    fig, axes = plt.subplots(1, len(settings), figsize=(3.2 * len(settings), 3.6), squeeze=False)
    for ax, (task, alpha) in zip(axes[0], settings, strict=True):
        mine = [r for r in rows if (r["task"], r["alpha"]) == (task, alpha)]
        names = [r["method"] for r in mine]
        ax.bar(names, [_mean(r["mean"]) or 0 for r in mine], color="tab:blue", alpha=0.4,
               label="mean silo")  # fmt: skip
        ax.bar(names, [_mean(r["worst"]) or 0 for r in mine], color="tab:red", alpha=0.7,
               label="worst silo")  # fmt: skip
        ax.set_title(f"{task}, α = {alpha}", fontsize=9)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recommended_text(tasks: list[str]) -> str:
    """``fraud: training.learning-rate = 0.01; …`` for the tasks that have one."""
    from tasks import get_task

    text = [
        f"{t}: " + ", ".join(f"`{k} = {v}`" for k, v in get_task(t).recommended.items())
        for t in tasks
        if get_task(t).recommended
    ]
    return "; ".join(text) or "none needed"


def render(report: dict[str, Any], png: str) -> str:
    rows = report["summary"]
    parts = parts_of(report)
    if len(parts) == 1:
        made = [
            f"{parts[0]['header']}; {parts[0]['seconds']:.0f} s wall on {parts[0]['machine']}, "
            f"1-minute load average {parts[0]['load-start']} at the start."
        ]
    else:
        made = ["Made of these invocations, merged (`--merge`), each from a clean commit:", ""]
        made += [
            f"- {p['header']}; {p['seconds']:.0f} s wall on {p['machine']}, 1-minute load "
            f"average {p['load-start']} at the start."
            for p in parts
        ]
        made.append("")
    rounds = {}
    for r in rows:
        rounds.setdefault(r["task"], set()).update(r.get("rounds") or [report.get("rounds")])
    per_task = ", ".join(f"{t} {'/'.join(str(n) for n in sorted(v))}" for t, v in rounds.items())
    seeds = sorted({s for r in rows for s in r["seeds"]})
    json_name = Path(png).with_suffix(".json").name
    lines = [
        MARK_START,
        *made,
        f"Raw numbers: [{json_name}]({json_name}).",
        "",
        f"Setup: {SILOS} silos, Dirichlet label skew, 1 local epoch, rounds per task: "
        f"{per_task}; seeds {', '.join(map(str, seeds))}; each task with its recommended "
        f"run config ({recommended_text(list(rounds))}). The last "
        "round's unweighted mean and worst silo on the silos' own validation splits. Cells "
        "are mean ± std over the seeds; `model` is what the method offers a silo.",
        "",
        table(rows).markdown(),
        "",
        f"![mean and worst silo per method]({Path(png).name})",
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        if (sentence := goal(rows, task)) is not None:
            lines += [sentence, ""]
    lines.append(MARK_END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(
        __doc__,
        render_only="rebuild the doc from its saved JSON (no federation is run)",
        out=harness.opt(None, "the doc to write (default docs/personalization.md)"),
        quick="digits α = 0.1 only, 1 seed, 5 rounds; writes nothing unless --out",
        seeds=harness.opt([1, 2, 3], "seeds (default 1 2 3)"),
        rounds=harness.opt(20, "federated rounds (default 20)"),
        workers=harness.opt(2, "worker processes (default 2)"),
        merge="add this invocation's runs to the saved JSON (replacing the runs it redoes) "
        "and render the doc from all of them",
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK")
    parser.add_argument("--alphas", nargs="+", type=float, default=list(ALPHAS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args(argv)
    out = harness.resolve_out(args, DOC, parser)
    json_path = (out or DOC).with_suffix(".json")
    png = (out or DOC).with_suffix(".png")
    if args.render_only:
        report = json.loads(json_path.read_text())
        note = harness.rerender_note("personalization")
        _write(render(report, str(png)) + "\n\n" + note, out or DOC)
        return
    if args.quick:
        args.tasks, args.alphas = args.tasks[:1], args.alphas[:1]
        args.seeds, args.rounds = args.seeds[:1], min(args.rounds, 5)
    session = harness.start("personalization", argv, [out, json_path, png] if out else None,
                            allow_dirty=args.allow_dirty)  # fmt: skip
    harness.log_to_console()
    items = cells(args.tasks, args.alphas, args.methods, args.seeds, args.rounds)
    runs = []
    for item, result in harness.run_workers(
        run_one, items, workers=args.workers, initializer=harness.quiet_worker, inline=None,
        progress=args.progress,
    ):  # fmt: skip
        logging.info("%s α=%s %s seed=%d: mean %s worst %s (%s)", *item[:4],
                     result["mean"], result["worst"], result["model"])  # fmt: skip
        runs.append(result)
    part = {**session.report(), "seeds": args.seeds, "rounds": args.rounds}
    report = {**part, "setup": SETUP, "methods": METHODS, "runs": runs, "summary": summary(runs)}
    if args.merge:
        report = {"setup": SETUP, "methods": METHODS,
                  **merged(json.loads(json_path.read_text()), part, runs)}  # fmt: skip
    print(table(report["summary"]).text())
    if out is None:
        return
    json_path.write_text(json.dumps(harness.json_safe(report), indent=1))
    plot(report["summary"], png)
    _write(render(report, str(png)), out)
    logging.info("wrote %s, %s and %s", out, json_path, png)


def _write(text: str, path: Path) -> None:
    harness.write_between_markers(path, text, MARK_START, MARK_END, "Personalisation")


if __name__ == "__main__":
    main()
