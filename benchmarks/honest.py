"""Honest silos and update validation's norm bound (issue #23, item 5).

``python -m benchmarks.honest`` → the "Honest silos" section of docs/robustness.md (between
``<!-- honest:begin -->`` and ``<!-- honest:end -->``; the robustness matrix keeps it when
it regenerates the page). Two measurements, all on the in-process grid (the real ServerApp
body and ClientApp):

* **Clean runs, no attack** in the compression benchmark's setting (digits, 10 IID silos,
  20 rounds, 3 local epochs, every silo every round, seeds 42–47), uncompressed and top-k 1 %:
  with the bound off, every honest update's norm over its round's cohort median (measured
  on the silo's own update, reply − sent model, uncompressed runs); then how many honest
  updates each bound rejects or clips (the round's ``rejected-updates`` /
  ``clipped-updates``): the default (clip above 3 × the median) and the old default
  (reject above 10 ×).
* **Attacks against the bound**: FedAvg in the robustness matrix's setting (20 silos, 4
  Byzantine, 8 rounds × 3 local epochs, seed 42), IID and Dirichlet α = 0.5, under no
  attack, scaling × 10 and × 100, and Gaussian noise, with the bound off, clipping at 3 × and
  at 5 ×, and the old reject at 10 ×: final test accuracy and the updates rejected or clipped.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks import robust as matrix
from benchmarks.harness import Table

DOC = Path("docs/robustness.md")
JSON = Path("docs/robustness-honest.json")
MARK_START, MARK_END = "<!-- honest:begin -->", "<!-- honest:end -->"
SEEDS = (42, 43, 44, 45, 46, 47)
CODECS = ("none", "topk")
#: Bound → run-config overrides of update validation's norm filter.
BOUNDS: dict[str, dict[str, Any]] = {
    "off": {"robust.max-update-norm-ratio": 0.0},
    "clip 3×": {"robust.norm-outliers": "clip", "robust.max-update-norm-ratio": 3.0},
    "clip 5×": {"robust.norm-outliers": "clip", "robust.max-update-norm-ratio": 5.0},
    "reject 10×": {"robust.norm-outliers": "reject", "robust.max-update-norm-ratio": 10.0},
}
CLEAN_BOUNDS = ("off", "clip 3×", "reject 10×")
#: Attack label → (``attack.kind``, ``attack.strength``; 0 = the attack's default).
ATTACKS: dict[str, tuple[str, float]] = {
    "none": ("none", 0.0),
    "scaling ×10": ("scaling", 10.0),
    "scaling ×100": ("scaling", 100.0),
    "gaussian σ = 1": ("gaussian", 0.0),
}


@dataclass(frozen=True)
class Cell:
    """One federation: ``kind`` "clean" (compression setting) or "attack" (matrix setting)."""

    kind: str
    bound: str
    seed: int
    codec: str = "none"
    attack: str = "none"
    partitioner: str = "iid"


@dataclass
class Outcome:
    cell: Cell
    accuracy: float
    updates: int
    rejected: int
    clipped: int
    ratios: list[float] = field(default_factory=list)  # honest ratios (bound off, clean, none)


def plan(seeds: Sequence[int] = SEEDS, quick: bool = False) -> list[Cell]:
    """The clean cells (codec × bound × seed), then the attack cells."""
    cells = [Cell("clean", bound, seed, codec=codec)
             for codec in CODECS for bound in CLEAN_BOUNDS for seed in seeds]  # fmt: skip
    partitioners = ("iid",) if quick else matrix.PARTITIONERS[::-1]
    cells += [Cell("attack", bound, matrix.SEED, attack=attack, partitioner=part)
              for part in partitioners for attack in ATTACKS for bound in BOUNDS]  # fmt: skip
    return cells


def run_config(cell: Cell, rounds: int | None = None) -> dict[str, Any]:
    """The flat run config of ``cell`` (``rounds`` overrides the setting's, for --quick)."""
    if cell.kind == "clean":
        from benchmarks.compression import run_config as compression_config

        config = compression_config(cell.codec, cell.seed)
    else:  # the robustness matrix's cell for FedAvg under this attack, with its strength
        kind, strength = ATTACKS[cell.attack]
        (planned,) = matrix.plan(
            partitioners=[cell.partitioner],
            attacks=[kind],
            aggregators=[matrix.aggregator("fedavg")],
        )
        config = {**planned.run_config(), "attack.strength": strength}
    config.update(BOUNDS[cell.bound])
    if rounds is not None:
        config["num-server-rounds"] = rounds
    return config


def num_silos(cell: Cell) -> int:
    return 10 if cell.kind == "clean" else matrix.NUM_CLIENTS


def run_cell(item: tuple[Cell, int | None]) -> Outcome:
    """One federation; the silos' own update norms are probed where they are plain."""
    from fl_app.client_app import app as client_app
    from fl_app.config import RunConfig
    from fl_app.federation import run_federation

    cell, rounds = item
    norms: list[float] = []
    sent_to: list[int] = []
    with tempfile.TemporaryDirectory(prefix="fedsilo-honest-") as tmp:
        cfg = RunConfig.from_flower({**run_config(cell, rounds), "output.run-dir": tmp})
        probe = cell.kind == "clean" and cell.codec == "none" and cell.bound == "off"
        grid = harness.probe_grid(
            client_app, cfg.to_flower(), num_silos(cell), norms if probe else [], sent_to
        )
        result, _ = run_federation(grid, cfg)
    train = result.train_metrics_clientapp
    last = cfg.num_server_rounds
    return Outcome(
        cell,
        accuracy=float(result.evaluate_metrics_serverapp[last]["accuracy"]),
        updates=sum(sent_to),
        rejected=int(sum(train[r].get("rejected-updates", 0) for r in train)),
        clipped=int(sum(train[r].get("clipped-updates", 0) for r in train)),
        ratios=round_ratios(norms, sent_to) if probe else [],
    )


def round_ratios(norms: Sequence[float], sent_to: Sequence[int]) -> list[float]:
    """Each update's norm over its round's median (``norms`` in order, ``sent_to[i]``
    updates in training round ``i``)."""
    ratios: list[float] = []
    start = 0
    for count in sent_to:
        cohort = norms[start : start + count]
        start += count
        if cohort:
            median = statistics.median(cohort)
            ratios += [n / median for n in cohort] if median > 0 else []
    return ratios


def markdown(outcomes: list[Outcome], code: Any, seconds: float, load: float | None) -> str:
    """The docs section."""
    clean = [o for o in outcomes if o.cell.kind == "clean"]
    attack = [o for o in outcomes if o.cell.kind == "attack"]
    seeds = sorted({o.cell.seed for o in clean})
    lines = [
        "## Honest silos: what update validation's norm bound costs them",
        "",
        f"Generated by `python -m benchmarks.honest` from {harness.code_label(code)}; "
        f"{seconds / 60:.0f} min wall on {harness.machine()}, 1-minute load average "
        f"{load if load is not None else '?'} at the start. In-process grid (the real "
        "ServerApp body and ClientApp). Raw numbers: "
        f"[{JSON.name}]({JSON.name}).",
        "",
    ]
    probed = [o for o in clean if o.ratios]
    if probed:
        top = {o.cell.seed: max(o.ratios) for o in probed}
        every = [r for o in probed for r in o.ratios]
        lines += [
            "**Honest updates are not all alike.** Clean runs in the compression benchmark's "
            "setting (digits, 10 IID silos, 20 rounds, 3 local epochs of SGD with momentum, "
            f"seeds {', '.join(map(str, seeds))}; no attack, bound off): the largest honest "
            "update over its round's median norm, per seed: "
            + ", ".join(f"{s} {r:.1f} ×" for s, r in top.items())
            + f"; {sum(r > 3 for r in every)} of {len(every)} updates exceed 3 ×, "
            f"{sum(r > 10 for r in every)} exceed 10 ×.",
            "",
        ]
    table = Table(["codec", "bound", *(f"seed {s}" for s in seeds), "honest updates",
                   "rejected", "clipped", "final accuracy (mean)"],
                  align="ll" + "r" * (len(seeds) + 4))  # fmt: skip
    for codec in CODECS:
        for bound in CLEAN_BOUNDS:
            mine = {o.cell.seed: o for o in clean if (o.cell.codec, o.cell.bound) == (codec, bound)}
            if not mine:
                continue
            table.add(
                codec, bound,
                *(f"{mine[s].rejected} rej., {mine[s].clipped} clip." if s in mine else "–"
                  for s in seeds),
                sum(o.updates for o in mine.values()),
                sum(o.rejected for o in mine.values()), sum(o.clipped for o in mine.values()),
                f"{statistics.fmean(o.accuracy for o in mine.values()):.4f}",
            )  # fmt: skip
    lines += [
        "**Honest rejection rate** (same clean runs; the default `robust.norm-outliers = "
        '"clip"` at `robust.max-update-norm-ratio = 3`, and the old default, reject above 10 ×):',
        "",
        table.markdown(),
        "",
    ]
    if attack:
        by = {(o.cell.partitioner, o.cell.attack, o.cell.bound): o for o in attack}
        parts = [p for p in matrix.PARTITIONERS[::-1] if any(k[0] == p for k in by)]
        cols = [(p, b) for p in parts for b in BOUNDS]
        head = [f"{'IID' if p == 'iid' else 'Dirichlet'}: {b}" for p, b in cols]
        atable = Table(["attack", *head], align="l" + "r" * len(cols))
        for name in ATTACKS:
            cells = []
            for p, b in cols:
                o = by.get((p, name, b))
                if o is None:
                    cells.append("–")
                    continue
                note = [f"{o.rejected} rej."] * bool(o.rejected) + [f"{o.clipped} clip."] * bool(
                    o.clipped
                )
                cells.append(f"{o.accuracy:.3f}" + (f" ({', '.join(note)})" if note else ""))
            atable.add(name, *cells)
        lines += [
            "**Attacks against the bound**: FedAvg in the robustness matrix's setting "
            f"({matrix.NUM_CLIENTS} silos, {matrix.NUM_BYZANTINE} Byzantine, {matrix.ROUNDS} "
            f"rounds × {matrix.LOCAL_EPOCHS} local epochs, seed {matrix.SEED}; Dirichlet "
            f"α = {matrix.DIRICHLET_ALPHA}); final test accuracy, and the updates the bound "
            "rejected or clipped over the run:",
            "",
            atable.markdown(),
            "",
        ]
    lines += [
        "The default clips: an update longer than 3 × its cohort's median is scaled down to "
        "that bound, keeping its direction, and is counted (`clipped-updates`), logged and "
        "audited; no update is dropped for its norm. The bound is hygiene against boosted and "
        "noisy updates, not Byzantine robustness: sign-flip, ALIE, IPM and the adaptive "
        "attacks stay within honest norms (use a robust rule). It is refused with central DP "
        "and secure aggregation (`robust.max-update-norm-ratio = 0`).",
    ]
    return "\n".join(lines)


def write_doc(text: str, path: Path) -> None:
    """Replace the section between the markers of ``path`` (they must be there)."""
    from fl_core.markers import replace_between_markers

    replace_between_markers(path, MARK_START, MARK_END, f"\n{text}\n")


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(
        __doc__, quick="2 rounds, 1 seed, IID only; writes nothing", seeds=list(SEEDS),
        workers=2, out=DOC, json=JSON,
    )  # fmt: skip
    args = parser.parse_args(argv)
    outputs = [] if args.quick else [args.out, args.out.parent / args.json.name]
    session = harness.start("honest", argv, outputs, allow_dirty=args.allow_dirty)
    harness.quiet("flwr", "fedsilo")
    seeds = args.seeds[:1] if args.quick else args.seeds
    rounds = 2 if args.quick else None
    outcomes = [
        outcome
        for _, outcome in harness.run_workers(
            run_cell, [(c, rounds) for c in plan(seeds, args.quick)], workers=args.workers,
            initializer=harness.prepare_worker, progress=args.progress, what="federations",
        )
    ]  # fmt: skip
    text = markdown(outcomes, session.code.to_json(), session.seconds, session.load_start)
    print(text)
    if not args.quick:
        write_doc(text, args.out)
        (args.out.parent / args.json.name).write_text(
            json.dumps(
                {"code": session.code.to_json(), "outcomes": [asdict(o) for o in outcomes]},
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=harness.LOG_FORMAT)
    sys.exit(main())
