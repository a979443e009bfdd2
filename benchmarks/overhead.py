"""Per-round overhead of a small simulation vs the same training done directly, and the
same for an earlier revision (``--before REV``), measured in one invocation.

Three ways to run the same federated rounds (digits, 10 silos, FedAvg, 3 local epochs,
every silo trains and evaluates every round, server-side evaluation after each round):

* **direct** — one process, no Flower: for every silo, load the global weights, train on
  its partition (the task's own ``train``, same seeds); average; evaluate on the server's
  test set; every silo evaluates on its validation split. The floor.
* **in-process** — the app's real ServerApp body and ClientApp on
  ``fl_app.inprocess.InProcessGrid`` (records, wrappers, validation, sinks, checkpoints;
  no transport, no Ray): what *our* code adds.
* **simulation** — real ``flwr run`` with the simulation engine (SuperLink, Ray actors,
  HTTP Grid): what Flower's runtime adds, with Flower's defaults and with ours
  (``sampling.reply-poll-interval``, ``client-resources-num-cpus=1``).

Per round, two figures, averaged over rounds 2…n (round 1 pays one-time imports):

* **wall**: round start → round end, both silo phases, aggregation, server evaluation
  and the checkpoint; from the run's audit log (the ``checkpoint`` entry every round ends
  with; the app also logs it as ``round-seconds``). For *direct*, the same loop's time.
* **silo phases**: ``train-seconds + evaluate-seconds`` the app logs (from handing a
  phase's instructions to Flower until the replies are back).

Each revision is measured by :mod:`benchmarks.overhead_worker` in its own process, run in
that revision's checkout (``--before REV``: a temporary ``git worktree``, removed
afterwards), so "before" and "after" rows come from the same machine minutes apart.

Usage::

    python -m benchmarks.overhead                      # this tree; writes docs/efficiency.md
    python -m benchmarks.overhead --before 6f0250c     # REV and this tree, one table
    python -m benchmarks.overhead --runtime deployment # Flower's SuperNode vs the warm one
    python -m benchmarks.overhead --quick              # direct + in-process only, 2 rounds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import harness
from benchmarks.efficiency_doc import DOC, write_section
from benchmarks.harness import Column, Table, Versus
from benchmarks.overhead_worker import SILOS, SIM_VARIANTS

PROJECT_DIR = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "overhead_worker.py"
#: Flower's FedAvg and a plain ClientApp doing the same work (benchmarks/plain_flower_app).
PLAIN_APP = Path(__file__).resolve().parent / "plain_flower_app"
SKIP = 1  # round 1 pays one-time imports (torch's optimiser pulls in torch._dynamo)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


@contextlib.contextmanager
def git_worktree(rev: str, repo: Path = PROJECT_DIR):
    """A temporary, detached ``git worktree`` of ``rev`` (removed afterwards; the main
    work tree and its index are not touched)."""
    resolved = _run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=repo)
    if resolved.returncode != 0:
        raise SystemExit(
            f"--before {rev!r} is not a commit of {repo}: {resolved.stderr.strip()}; pass a "
            "revision such as HEAD~1 or a commit hash"
        )
    commit = resolved.stdout.strip()
    path = Path(tempfile.mkdtemp(prefix="fedsilo-before-")) / commit[:12]
    added = _run(["git", "worktree", "add", "--detach", str(path), commit], cwd=repo)
    if added.returncode != 0:
        raise RuntimeError(f"git worktree add failed: {added.stderr.strip()}")
    try:
        yield path, commit
    finally:
        _run(["git", "worktree", "remove", "--force", str(path)], cwd=repo)
        _run(["git", "worktree", "prune"], cwd=repo)
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def measure_checkout(
    checkout: Path,
    rounds: int,
    variants: list[str],
    timeout: float = 3600.0,
    extra_args: tuple[str, ...] = (),
) -> tuple[dict[str, dict], dict | None]:
    """Run :mod:`benchmarks.overhead_worker` on ``checkout`` (its cwd and PYTHONPATH) with
    ``extra_args``; return its rows and its feature costs (``--features``; else None).
    Every process it started is stopped when it ends or times out."""
    env = harness.child_env(PYTHONPATH=str(checkout), OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory(prefix="fedsilo-overhead-") as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(WORKER), "--rounds", str(rounds), "--out", str(out)]
        cmd += ["--variants", *variants] if variants else []
        cmd += list(extra_args)
        popen = {"cwd": checkout, "env": env, "stderr": subprocess.PIPE, "text": True}
        with harness.child(cmd, **popen) as proc:
            try:
                _, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                harness.stop_tree(proc)
                _, err = proc.communicate()
                raise RuntimeError(f"measuring {checkout} timed out after {timeout} s") from None
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"measuring {checkout} failed:\n{(err or '')[-3000:]}")
        sys.stderr.write(err or "")
        saved = json.loads(out.read_text())
    if Path(saved["cwd"]).resolve() != checkout.resolve():
        raise RuntimeError(f"the worker ran in {saved['cwd']}, not in {checkout}")
    return saved["rows"], saved.get("features")


def summarise(rows: dict[str, dict], skip: int = SKIP) -> dict[str, dict]:
    """Mean wall and silo-phase seconds per round over rounds ``skip+1``…n."""
    out = {}
    for name, row in rows.items():
        wall, phases = row["wall"][skip:] or row["wall"], row["phases"][skip:] or row["phases"]
        out[name] = {**row, "per_round": statistics.fmean(wall),
                     "phases_per_round": statistics.fmean(phases)}  # fmt: skip
    return out


def table(revisions: dict[str, dict[str, dict]]) -> str:
    """One markdown table: every revision's rows, ``× direct`` against the same revision's
    direct loop, ``after / before`` of the last revision against the first."""
    wall = "wall s / round"
    out = Table(
        [
            "revision", "mode", Column(wall, ".2f"),
            Column("× direct", versus=Versus(wall, row="direct", label="mode", group="revision")),
            Column("after / before", versus=Versus(
                wall, row=next(iter(revisions)), label="revision", group="mode",
                show_baseline=False,
            )),
            Column("silo phases s / round", ".2f"), "wall per round, rounds 1…n",
            Column("total s", ".1f"),
        ],
        align="llrrrrlr",
    )  # fmt: skip
    for label, rows in revisions.items():
        for mode, row in rows.items():
            each = ", ".join(f"{t:.2f}" for t in row["wall"])
            out.add(label, mode, row["per_round"], row["phases_per_round"], each, row.get("total"))
    return out.markdown()


def accuracies(revisions: dict[str, dict[str, dict]]) -> str:
    """``label / mode = accuracy`` of every federated row (direct has no server model)."""
    return "; ".join(
        f"{label} / {mode} {row['final-accuracy']:.4f}"
        for label, rows in revisions.items()
        for mode, row in rows.items()
        if row.get("final-accuracy") is not None
    )


def markdown(result: dict) -> str:
    rounds = result["rounds"]
    revisions = {label: rev["rows"] for label, rev in result["revisions"].items()}
    which = ", ".join(
        f"**{label}** = `{rev['commit'][:12]}`" + (" + uncommitted changes" * rev.get("dirty", 0))
        for label, rev in result["revisions"].items()
    )
    return f"""## Simulation overhead (`python -m benchmarks.overhead`)

Digits, {SILOS} silos, FedAvg, 3 local epochs, every silo trains and evaluates every round,
{rounds} rounds; {which}. **wall s / round** is the mean over rounds 2…{rounds} (round 1 pays
one-time imports) of a round's wall time, start to end: both silo phases, aggregation,
server evaluation and checkpoint (from the audit log's per-round `checkpoint` entries;
logged as `round-seconds` too). **silo phases** is `train-seconds + evaluate-seconds`
(instructions handed to Flower → replies back). **direct** is the same training and
evaluation in one loop without Flower, per revision (the silo work itself got cheaper
where "after / before" of direct is below 1). Each revision ran in its own process from
its own checkout, one after the other, in one invocation. Machine: {harness.cpu_count()} cores,
load average {result["load_before"]:.1f} when started. Run {result["when"]}.

{table(revisions)}

Final server test accuracy (the same seeded model in every mode and revision when the
cuts are exact): {accuracies(revisions)}.

- **in-process**: our ServerApp + ClientApp code on the in-process grid (no transport).
- **simulation / flower-defaults**: `flwr run`, the ServerApp's Grid waiting with Flower's
  own loop (a fixed 3 s between pulls) and Flower's default `client-resources-num-cpus = 2`
  (one Ray actor on 2 cores).
- **simulation / prompt-polling**: our `PromptGrid` (`sampling.reply-poll-interval = 0.02`,
  back-off ×1.5 to 0.5 s), one actor; **+2-actors**: and `client-resources-num-cpus = 1`.
- **plain Flower / …**: `benchmarks/plain_flower_app` with the same federation settings:
  Flower's `FedAvg` run by `Strategy.start`, a plain ClientApp (model built per message),
  the same digits model, partitions, seeds, 3 local epochs and server-side evaluation
  (from `tasks/`); no roll call, wrappers, validation, checkpoints, audit log or sinks.
{plain_flower_section(result)}"""


def plain_ratios(rows: dict[str, dict]) -> list[tuple[str, dict, dict]]:
    """``(variant, ours, plain)`` for every simulation variant measured beside plain Flower."""
    return [
        (mode.split(" / ", 1)[1], rows[mode], rows["plain Flower / " + mode.split(" / ", 1)[1]])
        for mode in rows
        if mode.startswith("simulation / ") and "plain Flower / " + mode.split(" / ", 1)[1] in rows
    ]


def plain_flower_section(result: dict) -> str:
    """Ours against plain Flower (seconds per round and their ratio, goal ≤ 1.1×) and, when
    measured, what each of our features costs per round."""
    rows = list(result["revisions"].values())[-1]["rows"]
    pairs = plain_ratios(rows)
    if not pairs:
        return ""
    plain_s, ours_s = "plain Flower s / round", "ours s / round"
    table = Table(
        ["variant", Column(plain_s, ".2f"), Column(ours_s, ".2f"),
         Column("ours / plain",
                versus=Versus(ours_s, column=plain_s, fmt=lambda r: f"**{r:.2f}×**")),
         Column("ours − plain s", versus=Versus(ours_s, column=plain_s, diff=True, fmt="+.2f")),
         "silo phases plain / ours s"],
        align="lrrrrl",
    )  # fmt: skip
    for variant, ours, plain in pairs:
        table.add(
            variant, plain["per_round"], ours["per_round"],
            f"{plain['phases_per_round']:.2f} / {ours['phases_per_round']:.2f}",
        )  # fmt: skip
    lines = ["", "### Against plain Flower", "", table.markdown()]
    repeats = max(row.get("repeats", 1) for _, *both in pairs for row in both)
    lines += [
        "",
        f"Each figure is the mean over rounds 2…{result['rounds']}"
        + (f" of {repeats} runs per app, alternating plain and ours" if repeats > 1 else "")
        + "; goal: ours / plain ≤ 1.10.",
    ]
    features = result.get("features")
    if features:
        from benchmarks.feature_costs import markdown_rows

        difference = pairs[0][1]["per_round"] - pairs[0][2]["per_round"]
        share = (
            f"shares are of ours − plain of the first variant ({difference:+.2f} s)"
            if difference > 0
            else "ours was not slower than plain Flower in this run, so no shares"
        )
        lines += [
            "",
            "**What our features cost.** Exclusive time of each feature's code per round "
            f"(mean over rounds 2…{result['rounds']}), timed around the real functions in "
            "an in-process federation of the same settings (`benchmarks/feature_costs.py`); "
            f"{share}:",
            "",
            markdown_rows(features, difference if difference > 0 else None),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(
        __doc__, quick="no flwr run; 2 rounds", rounds=4, out=DOC,
        json=Path("docs/efficiency-overhead.json"),
        repeats=harness.opt(
            1, "runs of plain Flower and ours per variant, alternating (plain, ours, ours, …)"
        ),
    )  # fmt: skip
    parser.add_argument(
        "--variants", nargs="*", default=list(SIM_VARIANTS)[:1], choices=SIM_VARIANTS,
        help="flwr-run simulation variants (default: Flower's defaults only)",
    )  # fmt: skip
    parser.add_argument(
        "--before", metavar="REV", help="also measure git revision REV (a temporary worktree)"
    )
    parser.add_argument(
        "--plain", action=argparse.BooleanOptionalAction, default=True,
        help="run the plain Flower app beside every simulation variant (this tree only)",
    )  # fmt: skip
    parser.add_argument(
        "--features", action=argparse.BooleanOptionalAction, default=True,
        help="time each of our features in an in-process federation (this tree only)",
    )  # fmt: skip
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite the doc section from --json"
    )
    parser.add_argument(
        "--runtime", choices=("simulation", "deployment"), default="simulation",
        help="deployment: Flower's default SuperNode vs the warm one, 5 SuperNodes on "
        "loopback (benchmarks.overhead_deployment; uses --rounds, --repeats, --out)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error(f"--rounds must be ≥ 2 (round 1 is not averaged), got {args.rounds}")
    if args.runtime == "deployment":
        from benchmarks import overhead_deployment

        return overhead_deployment.main(
            ["--rounds", str(args.rounds), "--repeats", str(args.repeats), "--out", str(args.out)]
            + (["--allow-dirty"] if args.allow_dirty else [])
        )
    if args.render_only:
        saved = json.loads(args.json.read_text())
        if "revisions" not in saved:
            parser.error(
                f"{args.json} was written by an older benchmarks.overhead (no 'revisions'); "
                "re-run the benchmark to regenerate it"
            )
        text = f"{markdown(saved).rstrip()}\n\n{harness.rerender_note('overhead')}\n"
        write_section("overhead", text, args.out)
        return 0
    if args.quick:
        args.rounds, args.variants = 2, []
    outputs = [] if args.quick else [args.out, args.json]
    code = harness.start("overhead", argv, outputs, allow_dirty=args.allow_dirty).code
    head, dirty = code.commit or "unknown", code.dirty
    result = {
        "rounds": args.rounds,
        "load_before": harness.load_average(None),
        "when": harness.utc_now(),
        "revisions": {},
    }
    if args.before:
        with git_worktree(args.before) as (checkout, commit):
            rows, _ = measure_checkout(checkout, args.rounds, args.variants)
        result["revisions"]["before"] = {"commit": commit, "rows": summarise(rows)}
    extra = ["--repeats", str(args.repeats), *(["--features"] if args.features else [])]
    extra += ["--plain-app", str(PLAIN_APP)] if args.plain else []
    rows, result["features"] = measure_checkout(
        PROJECT_DIR, args.rounds, args.variants, extra_args=tuple(extra)
    )
    label = "after" if args.before else "this tree"
    result["revisions"][label] = {"commit": head, "dirty": dirty, "rows": summarise(rows)}
    text = markdown(result)
    print(text)
    if not args.quick:
        write_section("overhead", text, args.out)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
