"""Robustness sweep: every robust rule over Byzantine fraction × label skew × attack strength.

``python -m benchmarks.robust --sweep`` (issue #23, item 2). The axes:

* Byzantine fraction ``attack.fraction`` ∈ {10, 20, 30, 40} % of 20 silos
  (``robust.num-byzantine`` = the same count, the rules are told the truth);
* label skew: IID, Dirichlet α ∈ {1.0, 0.3, 0.1};
* attacks and strengths (:data:`VARIANTS`): IPM ε ∈ {0.1, 0.5, 1, 10}, ALIE z ∈ {the
  default from n and f, 1, 2}, scaling × {10, 100}, sign-flip, gaussian, label-flip,
  weight-inflation, the adaptive min-max, min-sum, ROP and Mimic, and ``none``;
* rules (:func:`rules`): every strategy of the ``robust`` family
  (``STRATEGIES.names(family="robust")``) plain, our rules (those in the rule registry)
  also behind NNM and behind bucketing (``robust.pre-aggregator``, bucket size 2), and
  FedAvg as the undefended reference.

The product is ≈ 9 500 federations: far too many for this machine. The reduction, stated
again in the doc:

1. **A small but real setting**: task ``digits``, 20 silos on the in-process grid (the
   real ServerApp body and ClientApp), :data:`ROUNDS` rounds × :data:`LOCAL_EPOCHS` local
   epochs (clean FedAvg ≈ 0.85–0.91); update validation's norm filter off so the cells
   measure the rules.
2. **Infeasible cells are not planned**: a rule that refuses the (n, f) of a cell (Bulyan
   needs n ≥ 4f + 3; behind bucketing a rule sees ⌈n / s⌉ inputs) would only crash; the
   refusal is asked of the rule itself (:func:`feasible`).
3. **Strongest attacks first**: a pilot (the :data:`PILOT_RULES` under every attack at
   :data:`PILOT_SETTING`) orders the attacks by the accuracy they leave (lowest first);
   for each (rule, fraction, skew) the attacks that already collapsed that rule elsewhere
   go first.
4. **Breadth first**: the next cell is the next attack of the (rule, fraction, skew) with
   the fewest cells run, so an interrupted sweep has every rule's strongest attacks
   everywhere before any weaker ones.
5. **Pruning of decided cells**: once a rule collapses to chance (accuracy ≤
   :data:`CHANCE`) at (fraction, skew) under some attack, its worst case there is decided;
   its remaining attacks there are pruned (recorded with the reason).
6. **Seeds where they decide the ranking**: once every (fraction, skew) of a rule has run
   a cell, the rule's worst cell (which decides its rank, and any near-tie) is rerun with
   a second seed (:data:`SEEDS`), again whenever the worst cell moves; the ranking uses
   the mean over seeds.
7. **Resume**: rows are written to the JSON as they finish; ``--resume`` reuses them, so
   the sweep accumulates across sessions; ``--budget`` stops starting cells after so many
   seconds and renders what is done (marked incomplete, with its coverage).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks import robust as matrix

LOG = logging.getLogger(__name__)

DEFAULT_OUT = Path("docs/robustness.md")
JSON_NAME = "robustness-sweep.json"
MARK_START, MARK_END = "<!-- robust-sweep:begin -->", "<!-- robust-sweep:end -->"
NUM_CLIENTS = 20
ROUNDS = 6
LOCAL_EPOCHS = 2
SEEDS = (42, 43)
FRACTIONS = (0.1, 0.2, 0.3, 0.4)
#: Label skew: name → Dirichlet α (``None`` = IID).
SKEWS: dict[str, float | None] = {"iid": None, "α=1.0": 1.0, "α=0.3": 0.3, "α=0.1": 0.1}
#: At or below this final accuracy a rule has collapsed to chance (10 classes).
CHANCE = 0.15
#: The pilot that orders the attacks: these rules under every attack at this setting.
PILOT_RULES = ("fedavg", "robust-median", "cclip")
PILOT_SETTING = (0.2, "α=0.3")
BUCKET_SIZE = 2


@dataclass(frozen=True)
class Variant:
    """An attack at one strength (``strength`` 0 = the attack's default)."""

    label: str
    kind: str
    strength: float = 0.0


VARIANTS = (
    Variant("sign-flip", "sign-flip"),
    Variant("gaussian", "gaussian"),
    Variant("scaling ×10", "scaling", 10.0),
    Variant("scaling ×100", "scaling", 100.0),
    Variant("label-flip", "label-flip"),
    Variant("alie", "alie"),
    Variant("alie z=1", "alie", 1.0),
    Variant("alie z=2", "alie", 2.0),
    Variant("ipm ε=0.1", "ipm", 0.1),
    Variant("ipm ε=0.5", "ipm", 0.5),
    Variant("ipm ε=1", "ipm", 1.0),
    Variant("ipm ε=10", "ipm", 10.0),
    Variant("weight-inflation", "weight-inflation"),
    Variant("min-max", "min-max"),
    Variant("min-sum", "min-sum"),
    Variant("rop", "rop"),
    Variant("mimic", "mimic"),
    Variant("none", "none"),
)
VARIANT = {v.label: v for v in VARIANTS}


@dataclass(frozen=True)
class Rule:
    """A row of the sweep: a strategy, plain or behind a pre-aggregator."""

    label: str
    strategy: str
    pre: str = "none"  # robust.pre-aggregator

    @property
    def family(self) -> str:
        return (
            "reference"
            if self.strategy == "fedavg"
            else self.pre
            if self.pre != "none"
            else "plain"
        )


def rules() -> list[Rule]:
    """FedAvg, then our rules plain, behind NNM and behind bucketing, then the rest of the
    robust family (Flower's) plain."""
    from strategies.registry import STRATEGIES
    from strategies.robust.registry import RULES

    robust = STRATEGIES.names(family="robust")
    ours = [n for n in robust if RULES.registered(n)]
    theirs = [n for n in robust if n not in ours]
    return [
        Rule("fedavg", "fedavg"),
        *(Rule(n, n) for n in ours),
        *(Rule(f"{n}+nnm", n, "nnm") for n in ours),
        *(Rule(f"{n}+bucketing", n, "bucketing") for n in ours),
        *(Rule(n, n) for n in theirs),
    ]


#: Flower's robust strategies → ours with the same rule (for :func:`feasible`).
SAME_RULE = {theirs: ours for theirs, ours in matrix.SAME_RULE}


def feasible(rule: Rule, num_clients: int, num_byzantine: int) -> str | None:
    """``None`` if ``rule`` accepts ``num_byzantine`` of ``num_clients`` updates, else the
    rule's own refusal. Asked of the strategy the app builds for the cell (its composed
    tensor rule and parameters) on a random input of the cell's shape, so the constraint
    lives in one place: the rule. Flower's strategies are asked through ours of the same
    rule."""
    import torch

    from strategies.registry import STRATEGIES, build_strategy
    from strategies.robust.strategy import RobustAggregation

    name = SAME_RULE.get(rule.strategy, rule.strategy)
    cfg = matrix.resolve_config({
        "strategy": name, "robust.num-byzantine": num_byzantine,
        "robust.pre-aggregator": rule.pre, "robust.bucket-size": BUCKET_SIZE,
    })  # fmt: skip
    strategy = build_strategy(cfg)
    if not isinstance(strategy, RobustAggregation):
        return None
    params = dict(strategy.rule_params)
    if STRATEGIES.get(name).extra.get("needs_server_update"):
        params["server_update"] = torch.ones(3, dtype=torch.float64)
    x = torch.randn(num_clients, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    try:
        strategy.aggregate(x, **params)
    except ValueError as exc:
        return str(exc).split(";")[0]
    return None


# --------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class SweepCell:
    """One federation of the sweep."""

    fraction: float
    skew: str
    attack: str  # a Variant label
    rule: str  # a Rule label
    seed: int = SEEDS[0]

    @property
    def group(self) -> tuple[float, str, str]:
        """The (fraction, skew, rule) whose worst case over attacks this cell informs."""
        return (self.fraction, self.skew, self.rule)

    @property
    def key(self) -> tuple[float, str, str, str, int]:
        return (self.fraction, self.skew, self.attack, self.rule, self.seed)


def row_key(row: Mapping[str, Any]) -> tuple[float, str, str, str, int]:
    return (row["fraction"], row["skew"], row["attack"], row["aggregator"], row["seed"])


def num_byzantine(fraction: float, num_clients: int = NUM_CLIENTS) -> int:
    """The Byzantine silos of ``fraction`` (as :func:`byzantine_partitions` counts them)."""
    return round(fraction * num_clients)


def run_config(cell: SweepCell, rule: Rule, *, rounds: int, local_epochs: int,
               num_clients: int = NUM_CLIENTS) -> dict[str, Any]:  # fmt: skip
    """The run-config overrides of ``cell`` (on top of the app's defaults)."""
    variant = VARIANT[cell.attack]
    alpha = SKEWS[cell.skew]
    return {
        **matrix.COMMON,
        "seed": cell.seed,
        "num-server-rounds": rounds,
        "training.local-epochs": local_epochs,
        "attack.fraction": cell.fraction,
        "robust.num-byzantine": num_byzantine(cell.fraction, num_clients),
        "data.partitioner": "iid" if alpha is None else "dirichlet",
        "data.dirichlet-alpha": matrix.DIRICHLET_ALPHA if alpha is None else alpha,
        "attack.kind": variant.kind,
        "attack.strength": variant.strength,
        "strategy": rule.strategy,
        "robust.pre-aggregator": rule.pre,
        "robust.bucket-size": BUCKET_SIZE,
    }


@dataclass
class Plan:
    """The sweep's full grid and the cells left out of it as infeasible."""

    rules: list[Rule]
    fractions: tuple[float, ...] = FRACTIONS
    skews: tuple[str, ...] = tuple(SKEWS)
    variants: tuple[str, ...] = tuple(v.label for v in VARIANTS)
    num_clients: int = NUM_CLIENTS
    infeasible: dict[tuple[float, str], str] | None = None  # (fraction, rule) → refusal

    def __post_init__(self) -> None:
        if self.infeasible is None:
            self.infeasible = {}
            for f in self.fractions:
                for rule in self.rules:
                    why = feasible(rule, self.num_clients, num_byzantine(f, self.num_clients))
                    if why is not None:
                        self.infeasible[(f, rule.label)] = why
        self.by_label = {r.label: r for r in self.rules}

    def groups(self) -> list[tuple[float, str, str]]:
        """Every feasible (fraction, skew, rule), harshest settings first within a rule."""
        return [
            (f, s, r.label)
            for r in self.rules
            for f in sorted(self.fractions, reverse=True)
            for s in reversed(self.skews)
            if (f, r.label) not in self.infeasible
        ]

    def cells(self) -> list[SweepCell]:
        """Every planned cell at the first seed."""
        return [SweepCell(f, s, a, r) for f, s, r in self.groups() for a in self.variants]

    def pilot(self) -> list[SweepCell]:
        f, s = PILOT_SETTING
        return [
            SweepCell(f, s, a, r)
            for r in PILOT_RULES
            if r in self.by_label and (f, r) not in self.infeasible
            for a in self.variants
            if a != "none"
        ]

    def references(self) -> list[SweepCell]:
        """Clean FedAvg per skew (the reference of every drop)."""
        return [SweepCell(min(self.fractions), s, "none", "fedavg") for s in self.skews]


# --------------------------------------------------------------------------- schedule
def _acc(row: Mapping[str, Any]) -> float | None:
    return row.get("accuracy")


def collapsed(row: Mapping[str, Any]) -> bool:
    """The run crashed or ended at chance."""
    acc = _acc(row)
    return acc is None or acc <= CHANCE


def attack_order(plan: Plan, rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The attacks strongest first: by the mean accuracy the pilot's rules keep under them
    (attacks the pilot has not measured after, in declared order; ``none`` last)."""
    f, s = PILOT_SETTING
    accs: dict[str, list[float]] = {}
    for r in rows:
        if (r["fraction"], r["skew"], r["seed"]) == (f, s, SEEDS[0]) and r[
            "aggregator"
        ] in PILOT_RULES:
            accs.setdefault(r["attack"], []).append(0.0 if _acc(r) is None else _acc(r))
    declared = list(plan.variants)

    def key(a: str) -> tuple[int, float, int]:
        if a == "none":
            return (2, 0.0, 0)
        if a in accs:
            return (0, statistics.fmean(accs[a]), declared.index(a))
        return (1, 0.0, declared.index(a))

    return sorted(plan.variants, key=key)


@dataclass
class State:
    """What the finished rows say: per group the attacks done, and the decided groups."""

    done: dict[tuple[float, str, str, str, int], Mapping[str, Any]]
    by_group: dict[tuple[float, str, str], list[Mapping[str, Any]]]
    decided: dict[tuple[float, str, str], str]  # group → the attack that collapsed it
    broke: dict[str, list[str]]  # rule → attacks that collapsed it somewhere, first first


def state(rows: Iterable[Mapping[str, Any]]) -> State:
    done = {row_key(r): r for r in rows}
    by_group: dict[tuple[float, str, str], list[Mapping[str, Any]]] = {}
    decided: dict[tuple[float, str, str], str] = {}
    broke: dict[str, list[str]] = {}
    for r in done.values():
        if r["seed"] != SEEDS[0]:
            continue
        g = (r["fraction"], r["skew"], r["aggregator"])
        by_group.setdefault(g, []).append(r)
        if collapsed(r) and r["attack"] != "none":
            decided.setdefault(g, r["attack"])
            if r["attack"] not in broke.setdefault(r["aggregator"], []):
                broke[r["aggregator"]].append(r["attack"])
    return State(done, by_group, decided, broke)


def group_order(
    plan: Plan, st: State, group: tuple[float, str, str], order: list[str]
) -> list[str]:
    """The attacks of ``group`` in the order to run them: those that collapsed its rule
    elsewhere first, then ``order``."""
    first = [a for a in st.broke.get(group[2], []) if a in plan.variants]
    return first + [a for a in order if a not in first]


def decisive_cells(plan: Plan, rows: Iterable[Mapping[str, Any]]) -> list[SweepCell]:
    """The cells that decide the ranking, to run with every seed: each rule's worst cell
    (first seed; the first of equal ones). That covers the near-ties, and a collapse is
    confirmed by the second seed too."""
    worst: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        if r["seed"] != SEEDS[0] or r["attack"] == "none":
            continue
        w = worst.get(r["aggregator"])
        if w is None or _sort_acc(r) < _sort_acc(w):
            worst[r["aggregator"]] = r
    return [SweepCell(r["fraction"], r["skew"], r["attack"], label) for label, r in worst.items()]


def _sort_acc(row: Mapping[str, Any]) -> float:
    acc = _acc(row)
    return -1.0 if acc is None else acc


def next_cells(plan: Plan, rows: Sequence[Mapping[str, Any]], *, busy: Iterable[SweepCell] = (),
               limit: int = 1) -> list[SweepCell]:  # fmt: skip
    """The next ``limit`` cells to run given the finished ``rows`` (and the cells still
    running, ``busy``): the clean references, the pilot, then breadth first over the
    undecided (fraction, skew, rule) groups — the next attack of the group with the fewest
    cells run — with the second seed of each rule's worst cell as soon as every group of
    the rule has run a cell. ``[]`` when the sweep is complete."""
    st = state(rows)
    taken = set(st.done) | {c.key for c in busy}
    out: list[SweepCell] = []

    def want(cell: SweepCell) -> bool:
        if cell.key in taken or len(out) >= limit:
            return False
        out.append(cell)
        taken.add(cell.key)
        return True

    for cell in (*plan.references(), *plan.pilot()):
        want(cell)
    if len(out) >= limit:
        return out
    order = attack_order(plan, rows)
    open_groups = []
    for g in plan.groups():
        if g in st.decided:
            continue
        todo = [
            a for a in group_order(plan, st, g, order) if (*g[:2], a, g[2], SEEDS[0]) not in taken
        ]
        if todo:
            # Attack "none" (the clean references) does not count: it bounds no worst case.
            ran = sum(r["attack"] != "none" for r in st.by_group.get(g, ()))
            open_groups.append((ran, g, todo))
    in_first_pass = {g[2] for ran, g, _ in open_groups if ran == 0}
    for cell in decisive_cells(plan, rows):
        if cell.rule not in in_first_pass:
            for seed in SEEDS[1:]:
                want(SweepCell(cell.fraction, cell.skew, cell.attack, cell.rule, seed))
    rank = {g: i for i, g in enumerate(plan.groups())}
    for _, g, todo in sorted(open_groups, key=lambda t: (t[0], rank[t[1]])):
        want(SweepCell(g[0], g[1], todo[0], g[2]))
        if len(out) >= limit:
            break
    return out


def coverage(plan: Plan, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Cells planned, run, pruned (and why) and not reached, at the first seed; plus the
    cells of the second seed and the infeasible cells left out of the plan."""
    st = state(rows)
    planned = plan.cells()
    run = [c for c in planned if c.key in st.done]
    pruned = [c for c in planned if c.key not in st.done and c.group in st.decided]
    missing = len(planned) - len(run) - len(pruned)
    infeasible_cells = sum(
        len(plan.skews) * len(plan.variants)
        for _ in plan.infeasible  # type: ignore[union-attr]
    )
    return {
        "grid": len(planned) + infeasible_cells,
        "infeasible": infeasible_cells,
        "planned": len(planned),
        "run": len(run),
        "pruned": len(pruned),
        "not-reached": missing,
        "decided-groups": len(st.decided),
        "groups": len(plan.groups()),
        "extra-seed-cells": sum(1 for k in st.done if k[4] != SEEDS[0]),
        "complete": missing == 0,
    }


# --------------------------------------------------------------------------- running
def run_one(item: tuple[SweepCell, Rule, int, int, int]) -> dict[str, Any]:
    """One federation on the in-process grid (:func:`benchmarks.robust.run_cell`); its row."""
    cell, rule, rounds, epochs, num_clients = item
    overrides = run_config(cell, rule, rounds=rounds, local_epochs=epochs, num_clients=num_clients)
    row = matrix.run_cell(
        matrix.Cell(
            cell.skew,
            cell.attack,
            rule.label,
            rule.family,
            tuple(sorted(overrides.items())),
            num_clients,
        )
    )
    variant = VARIANT[cell.attack]
    row.update(
        fraction=cell.fraction, skew=cell.skew, seed=cell.seed, pre_aggregator=rule.pre,
        attack_kind=variant.kind, attack_strength=variant.strength,
        num_byzantine=num_byzantine(cell.fraction, num_clients),
    )  # fmt: skip
    row.pop("partitioner", None)
    return row


def sweep(
    plan: Plan,
    rows: list[dict[str, Any]],
    *,
    run: Callable[[SweepCell], dict[str, Any]],
    on_row: Callable[[dict[str, Any]], None] = lambda _: None,
    budget: float = math.inf,
    clock: Callable[[], float] | None = None,
) -> bool:
    """Run cells (in this process, one at a time) until the sweep is complete or
    ``budget`` seconds have passed; ``rows`` grows. True when complete."""
    watch = harness.Stopwatch()
    now = clock or (lambda: watch.seconds)
    while now() < budget:
        todo = next_cells(plan, rows)
        if not todo:
            return True
        row = run(todo[0])
        rows.append(row)
        on_row(row)
    return not next_cells(plan, rows)


# --------------------------------------------------------------------------- analysis
def cell_means(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[float, str, str, str], dict]:
    """Per (fraction, skew, attack, rule): the accuracy of each seed and their mean
    (a crashed seed counts as 0)."""
    out: dict[tuple[float, str, str, str], dict] = {}
    for r in rows:
        k = (r["fraction"], r["skew"], r["attack"], r["aggregator"])
        entry = out.setdefault(k, {"seeds": {}, "error": None})
        entry["seeds"][r["seed"]] = _acc(r)
        entry["error"] = entry["error"] or r.get("error")
    for entry in out.values():
        accs = [0.0 if a is None else a for a in entry["seeds"].values()]
        entry["mean"] = statistics.fmean(accs)
    return out


def worst_per_rule(rows: Sequence[Mapping[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    """Per rule: the worst (lowest mean-over-seeds) accuracy over every attacked cell run,
    with its cell, sorted best first."""
    means = cell_means(rows)
    out: dict[str, dict[str, Any]] = {}
    for (f, s, a, rule), e in means.items():
        if a == "none":
            continue
        w = out.get(rule)
        if w is None or e["mean"] < w["accuracy"]:
            out[rule] = {"rule": rule, "accuracy": e["mean"], "fraction": f, "skew": s,
                         "attack": a, "seeds": e["seeds"]}  # fmt: skip
    for rule, w in out.items():
        w["cells"] = sum(1 for k in means if k[3] == rule and k[2] != "none")
        w["family"] = plan.by_label[rule].family if rule in plan.by_label else "?"
    order = {r.label: i for i, r in enumerate(plan.rules)}
    return sorted(out.values(), key=lambda w: (-w["accuracy"], order.get(w["rule"], 99)))


def worst_grid(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[float, str, str], dict]:
    """Per (fraction, skew, rule): the worst accuracy over the attacks run (mean over
    seeds), its attack and how many attacks ran."""
    out: dict[tuple[float, str, str], dict] = {}
    for (f, s, a, rule), e in cell_means(rows).items():
        if a == "none":
            continue
        g = out.setdefault((f, s, rule), {"accuracy": math.inf, "attack": None, "attacks": 0})
        g["attacks"] += 1
        if e["mean"] < g["accuracy"]:
            g["accuracy"], g["attack"] = e["mean"], a
    return out


def clean_reference(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Clean FedAvg's accuracy per skew (first seed)."""
    return {
        r["skew"]: r["accuracy"]
        for r in rows
        if r["aggregator"] == "fedavg" and r["attack"] == "none" and r["seed"] == SEEDS[0]
        and r["accuracy"] is not None
    }  # fmt: skip


def collapse_conditions(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Where the sweep shows a rule collapsing to chance: per (strategy, pre-aggregator), the
    smallest Byzantine fraction at which it collapsed under some attack, per skew (α, or
    ``None`` for IID: then at any skew), reduced to the conditions not implied by another
    (a condition (f, α) implies every (f' ≥ f, α' ≤ α)). The data of
    :data:`strategies.robust.collapse.COLLAPSES`."""
    seen: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for (f, s, a, rule), e in cell_means(rows).items():
        if a == "none" or rule == "fedavg" or e["mean"] > CHANCE:
            continue
        strategy, _, pre = rule.partition("+")
        alpha = SKEWS.get(s)
        seen.setdefault((strategy, pre or "none"), []).append(
            (f, math.inf if alpha is None else alpha, a)
        )
    out = []
    for (strategy, pre), points in sorted(seen.items()):
        keep = []
        for f, alpha, a in sorted(points, key=lambda p: (p[0], -p[1])):
            if any(f >= kf and alpha <= ka for kf, ka, _ in keep):
                continue
            keep.append((f, alpha, a))
        for f, alpha, a in keep:
            max_alpha = None if math.isinf(alpha) else alpha
            out.append({"strategy": strategy, "pre_aggregator": pre, "min_fraction": f,
                        "max_alpha": max_alpha, "attack": a})  # fmt: skip
    return out


#: Pre-aggregators in order of preference on a tie (simplest first).
PRE_ORDER = ("none", "nnm", "bucketing")


def auto_pre_aggregator(rows: Sequence[Mapping[str, Any]], plan: Plan) -> dict[str, dict]:
    """Per rule run behind pre-aggregators: the pre-aggregator with the highest worst-case
    accuracy (:func:`worst_grid`) averaged over the (fraction, skew) settings where the
    plain rule ran. A pre-aggregator the rule refuses somewhere (bucketing leaves too few
    inputs for its f), or not run at every such setting, is no candidate: a default must
    run wherever the rule does. Ties go to the simpler (:data:`PRE_ORDER`). The data of
    :data:`strategies.robust.defaults.AUTO` (``robust.pre-aggregator = "auto"``)."""
    grid = worst_grid(rows)
    variants: dict[str, dict[str, str]] = {}
    for rule in plan.rules:
        variants.setdefault(rule.strategy, {})[rule.pre] = rule.label
    out: dict[str, dict] = {}
    for strategy, by_pre in variants.items():
        if set(by_pre) == {"none"} or "none" not in by_pre:
            continue
        settings = [(f, s) for f in plan.fractions for s in plan.skews
                    if (f, s, by_pre["none"]) in grid]  # fmt: skip
        if not settings:
            continue
        means = {}
        for pre in PRE_ORDER:
            label = by_pre.get(pre)
            if label is None or any((f, s, label) not in grid for f, s in settings):
                continue
            means[pre] = round(statistics.fmean(grid[f, s, label]["accuracy"]
                                                for f, s in settings), 4)  # fmt: skip
        choice = max(means, key=lambda p: (means[p], -PRE_ORDER.index(p)))
        out[strategy] = {"choice": choice, "mean_worst": means, "settings": len(settings)}
    return out


def recommendations(rows: Sequence[Mapping[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    """Per (fraction, skew) and root data (FLTrust allowed or not): the rule with the best
    worst case over the attacks run there, and the runner-up."""
    grid = worst_grid(rows)
    out = []
    for f in plan.fractions:
        for s in plan.skews:
            for root in (False, True):
                cands = [
                    (g["accuracy"], g["attacks"], rule)
                    for (gf, gs, rule), g in grid.items()
                    if (gf, gs) == (f, s) and rule != "fedavg"
                    and (root or not rule.startswith("fltrust"))
                ]  # fmt: skip
                if not cands:
                    continue
                # Only the rules tested with the most attacks there (or already at chance):
                # a rule with fewer attacks run has a looser upper bound.
                most = max((c[1] for c in cands if c[0] > CHANCE), default=0)
                cands = [c for c in cands if c[1] >= most or c[0] <= CHANCE]
                cands.sort(key=lambda c: (-c[0], -c[1]))
                fedavg = grid.get((f, s, "fedavg"))
                out.append({
                    "fraction": f, "skew": s, "root_data": root,
                    "rule": cands[0][2], "worst": cands[0][0], "attacks": cands[0][1],
                    "runner_up": cands[1][2] if len(cands) > 1 else None,
                    "runner_up_worst": cands[1][0] if len(cands) > 1 else None,
                    "fedavg_worst": None if fedavg is None else fedavg["accuracy"],
                    "candidates": len(cands),
                })  # fmt: skip
    return out


# --------------------------------------------------------------------------- outputs
def to_json(rows, meta, plan) -> dict[str, Any]:
    return harness.json_safe(
        {
            "meta": dict(meta),
            "coverage": coverage(plan, rows),
            "attack_order": attack_order(plan, rows),
            "infeasible": [
                {"fraction": f, "rule": r, "reason": why}
                for (f, r), why in sorted(plan.infeasible.items())  # type: ignore[union-attr]
            ],
            "clean_fedavg": clean_reference(rows),
            "worst_per_rule": worst_per_rule(rows, plan),
            "collapse_conditions": collapse_conditions(rows),
            "auto_pre_aggregator": auto_pre_aggregator(rows, plan),
            "recommendations": recommendations(rows, plan),
            "rows": [dict(r) for r in rows],
        }
    )


def _a(value: float | None) -> str:
    return "–" if value is None or math.isinf(value) else f"{value:.2f}"


def _frac(f: float) -> str:
    return f"{round(100 * f)} %"


def _png(out: Path, f: float) -> Path:
    return out.with_name(f"{out.stem}-sweep-f{round(100 * f)}.png")


def render_pngs(rows, plan, out: Path) -> list[Path]:
    """One heatmap per fraction: rules × skew, the worst accuracy over the attacks run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = worst_grid(rows)
    labels = [r.label for r in plan.rules]
    paths = []
    for f in plan.fractions:
        data = np.full((len(labels), len(plan.skews)), np.nan)
        for i, rule in enumerate(labels):
            for j, s in enumerate(plan.skews):
                g = grid.get((f, s, rule))
                if g is not None:
                    data[i, j] = g["accuracy"]
        fig, ax = plt.subplots(figsize=(5.2, 0.3 * len(labels) + 1.6), constrained_layout=True)
        cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#dddddd")
        image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for i, rule in enumerate(labels):
            for j, s in enumerate(plan.skews):
                g = grid.get((f, s, rule))
                if (f, rule) in plan.infeasible:  # type: ignore[operator]
                    text = "n/a"
                elif g is None:
                    text = ""
                else:
                    text = f"{g['accuracy']:.2f} ({g['attacks']})"
                ax.text(j, i, text, ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(plan.skews)), list(plan.skews))
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(f"{_frac(f)} Byzantine: worst accuracy (attacks run)", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.5, label="accuracy")
        path = _png(out, f)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def infeasible_text(plan: Plan) -> str:
    """The infeasible (fraction, rule) pairs, one phrase a rule: ``bulyan at 30 %, 40 %
    (bulyan, which requires n >= 4*num_byzantine + 3)``."""
    by_rule: dict[str, list[float]] = {}
    why: dict[str, str] = {}
    for (f, rule), reason in sorted(plan.infeasible.items()):  # type: ignore[union-attr]
        by_rule.setdefault(rule, []).append(f)
        why[rule] = reason.split(" is invalid for ", 1)[-1]
    return "; ".join(
        f"{rule} at {', '.join(_frac(f) for f in fs)} ({why[rule]})" for rule, fs in by_rule.items()
    )


def render_markdown(rows, meta, plan, out: Path, note: str = "") -> str:
    """The sweep's part of docs/robustness.md, between :data:`MARK_START` and
    :data:`MARK_END` (ends with the "which rule for which threat" table)."""
    cov = coverage(plan, rows)
    clean = clean_reference(rows)
    order = attack_order(plan, rows)
    code = meta.get("code") or {}
    sessions = meta.get("sessions") or []
    wall = sum(s.get("wall-seconds", 0.0) for s in sessions)
    cpu = sum(r.get("cpu_seconds") or 0.0 for r in rows)
    secs = [r["seconds"] for r in rows if r.get("seconds")]
    L = [
        MARK_START,
        "",
        "## Robustness sweep: worst case per rule over fraction × skew × attack strength",
        "",
        f"Generated by `{meta.get('command')}` at commit `{code.get('commit')}`"
        + (" (**uncommitted changes**)" if code.get("uncommitted") else "")
        + f" in {len(sessions)} session(s), {wall / 60:.0f} min wall-clock on one worker; "
        f"{len(rows)} federations, {cpu / 60:.0f} min of CPU, median "
        f"{statistics.median(secs) if secs else 0:.1f} s per federation. "
        + (
            "**The sweep is complete.**"
            if cov["complete"]
            else f"**The sweep is incomplete**: {cov['run']} of {cov['planned']} planned cells ran "
            f"({cov['pruned']} pruned as decided, {cov['not-reached']} not reached); every "
            "figure below is over the cells that ran, so a worst case is an upper bound "
            "(an attack not yet run could lower it). `--resume` continues it."
        )
        + " Sessions: "
        + "; ".join(
            f"{s.get('started', '?')}, commit `{(s.get('code') or {}).get('commit')}`"
            + (" (uncommitted changes)" if (s.get("code") or {}).get("uncommitted") else "")
            + f", {s.get('cells', 0)} cells, {s.get('wall-seconds', 0) / 60:.0f} min"
            for s in sessions
        )
        + f". Rows: [{JSON_NAME}]({JSON_NAME}).{(' ' + note) if note else ''}",
        "",
        "### Setup and reduction",
        "",
        f"* Task `digits`, {meta.get('num-clients')} silos on the in-process grid (the real "
        f"ServerApp body and ClientApp), {meta.get('num-server-rounds')} rounds × "
        f"{meta.get('local-epochs')} local epochs, validation's norm filter off (the cells "
        "measure the rules). Clean FedAvg: "
        + ", ".join(f"{s} {clean[s]:.3f}" for s in plan.skews if s in clean)
        + ".",
        f"* Axes: Byzantine fraction {', '.join(_frac(f) for f in plan.fractions)} "
        "(`attack.fraction`, and `robust.num-byzantine` = the true count); skew "
        f"{', '.join(plan.skews)} (Dirichlet α); {len(plan.variants)} attacks "
        f"({', '.join(plan.variants)}); {len(plan.rules)} rules: FedAvg (undefended "
        "reference), every strategy of the robust family plain, and ours also behind NNM "
        f"and behind bucketing (s = {BUCKET_SIZE}).",
        f"* The full product is {cov['grid']} federations. **Infeasible** cells "
        f"({cov['infeasible']}) are left out: the rule refuses the cell's (n, f) — "
        + infeasible_text(plan)
        + f"; behind bucketing a rule sees ⌈n / s⌉ = {math.ceil(plan.num_clients / BUCKET_SIZE)} "
        "inputs and is still told the true f.",
        f"* **Strongest attacks first**: a pilot ({', '.join(PILOT_RULES)} under every attack at "
        f"{_frac(PILOT_SETTING[0])}, {PILOT_SETTING[1]}) orders them by the mean accuracy they "
        f"leave: {', '.join(order)}. For each (rule, fraction, skew) the attacks that already "
        "collapsed the rule elsewhere go first. **Breadth first**: the next cell is the next "
        "attack of the (rule, fraction, skew) with the fewest cells run.",
        f"* **Pruning**: once a rule ends at chance (accuracy ≤ {CHANCE:g}) at (fraction, skew) "
        "under one attack, its worst case there is decided and its other attacks there are "
        f"skipped: {cov['decided-groups']} of {cov['groups']} (rule, fraction, skew) groups, "
        f"{cov['pruned']} cells.",
        f"* **Seeds**: seed {SEEDS[0]} everywhere; once every (fraction, skew) of a rule has "
        "run a cell, the rule's worst cell (it decides the rule's rank and any near-tie) is "
        f"rerun with seed {', '.join(map(str, SEEDS[1:]))} ({cov['extra-seed-cells']} cells; "
        "also when the rule is at chance, to confirm the collapse); figures are the "
        "mean over the seeds run.",
        f"* **Coverage**: {cov['run']} of {cov['planned']} planned cells ran, {cov['pruned']} "
        f"pruned, {cov['not-reached']} not reached.",
        "",
        "### Worst case per rule over the whole sweep",
        "",
    ]
    t = harness.Table(["rank", "rule", "kind", "worst accuracy", "cell (fraction, skew, attack)",
                       "seeds", "attacked cells run"], align="rllrlll")  # fmt: skip
    for i, w in enumerate(worst_per_rule(rows, plan), 1):
        seeds = ", ".join(f"{k}: {_a(v)}" for k, v in sorted(w["seeds"].items()))
        t.add(i, w["rule"], w["family"], f"**{w['accuracy']:.3f}**",
              f"{_frac(w['fraction'])}, {w['skew']}, {w['attack']}", seeds, w["cells"])  # fmt: skip
    L += [t.markdown(), ""]
    grid = worst_grid(rows)
    for f in plan.fractions:
        L += [f"### {_frac(f)} Byzantine: worst accuracy over the attacks run", "",
              "Cell: worst accuracy (its attack; attacks run). n/a = infeasible.", ""]  # fmt: skip
        t = harness.Table(["rule", *plan.skews], left=1)
        for rule in plan.rules:
            vals = []
            for s in plan.skews:
                g = grid.get((f, s, rule.label))
                if (f, rule.label) in plan.infeasible:  # type: ignore[operator]
                    vals.append("n/a")
                elif g is None:
                    vals.append("·")
                else:
                    vals.append(f"{g['accuracy']:.2f} ({g['attack']}; {g['attacks']})")
            t.add(rule.label, *vals)
        L += [t.markdown(), "", f"![{_frac(f)} Byzantine]({_png(out, f).name})", ""]
    conds = collapse_conditions(rows)
    L += [
        "### Collapses and run-time warnings",
        "",
        "Where a rule ended at chance, as conditions (Byzantine fraction ≥ f, and Dirichlet "
        "α ≤ a; no α = already under IID). A run that chooses the rule under such a "
        "condition logs a warning at its start naming the rule, the condition and this "
        "section (`strategies.robust.collapse.COLLAPSES`, the same list):",
        "",
    ]
    if conds:
        t = harness.Table(["rule", "pre-aggregator", "fraction ≥", "α ≤", "attack"])
        for c in conds:
            alpha = "any (IID too)" if c["max_alpha"] is None else f"{c['max_alpha']:g}"
            t.add(c["strategy"], c["pre_aggregator"], _frac(c["min_fraction"]), alpha,
                  c["attack"])  # fmt: skip
        L += [t.markdown(), ""]
    else:
        L += ["No rule collapsed in the cells run.", ""]
    auto = auto_pre_aggregator(rows, plan)
    L += _auto_section(rows, plan, auto)
    L += [
        "## Which rule for which threat",
        "",
        "Derived from the sweep rows by code: per Byzantine fraction and skew, the rule with "
        "the best worst case over the attacks run there, among the rules run with the most "
        "attacks there, without server root data (FLTrust "
        "excluded) and with it; FedAvg's worst case for comparison. Read a row together with "
        "its attack count: with few attacks run the worst case is an upper bound. *Run "
        "config*: the keys that give the row's rule, with `robust.num-byzantine` set to the "
        "Byzantine silos defended against (the sweep tells the rules the truth); "
        "`robust.pre-aggregator` is named only where the rule differs from its default "
        f"(`auto`, above). **none holds**: every rule ended at chance (≤ {CHANCE:g}) there.",
        "",
    ]
    t = harness.Table(["Byzantine", "skew", "root data", "rule", "run config", "worst acc.",
                       "attacks run", "runner-up", "FedAvg worst"],
                      align="llllllrll")  # fmt: skip
    for r in recommendations(rows, plan):
        held = r["worst"] > CHANCE
        rule = r["rule"] if held else f"**none holds** (best: {r['rule']})"
        keys = run_config_hint(plan.by_label[r["rule"]], auto) if held else "–"
        t.add(_frac(r["fraction"]), r["skew"], "yes" if r["root_data"] else "no", rule, keys,
              _a(r["worst"]), r["attacks"],
              f"{r['runner_up']} ({_a(r['runner_up_worst'])})" if r["runner_up"] else "–",
              _a(r["fedavg_worst"]))  # fmt: skip
    L += [t.markdown(), "", MARK_END]
    return "\n".join(L)


def run_config_hint(rule: Rule, auto: Mapping[str, Mapping[str, Any]]) -> str:
    """The run-config keys that give ``rule`` (``robust.num-byzantine`` left to the user):
    the strategy, and the pre-aggregator unless ``auto`` (:func:`auto_pre_aggregator`)
    already picks it for a run with Byzantine silos."""
    keys = f"`strategy='{rule.strategy}'`"
    default = auto.get(rule.strategy, {}).get("choice", "none")
    if rule.strategy != "fedavg" and rule.strategy in auto and rule.pre != default:
        keys += f" `robust.pre-aggregator='{rule.pre}'`"
    return keys


def _auto_section(rows, plan, auto: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The doc's account of ``robust.pre-aggregator = "auto"`` (``auto``:
    :func:`auto_pre_aggregator` of ``rows``)."""
    L = [
        "### The default pre-aggregator",
        "",
        '`robust.pre-aggregator = "auto"` (the default) puts in front of each of our rules '
        "the pre-aggregator with the best worst case in this sweep: per rule, its worst-case "
        "accuracy at each (Byzantine fraction, skew) where the plain rule ran, averaged over "
        "those settings; a pre-aggregator the rule refuses at some of them is no candidate, "
        "and a tie goes to the simpler. A run that leaves `robust.num-byzantine = 0` gets no "
        "pre-aggregator (NNM mixes each update with its n − f nearest: all of them at f = 0). "
        "The choice is `strategies.robust.defaults.AUTO` (the same figures); the run log "
        "states it at the start. Per skew, the mean over the fractions, plain → chosen:",
        "",
    ]
    if not auto:
        return [*L, "No rule ran behind a pre-aggregator yet.", ""]
    grid = worst_grid(rows)
    by_label = {(r.strategy, r.pre): r.label for r in plan.rules}
    t = harness.Table(["rule", "settings", *(f"mean worst: {p}" for p in PRE_ORDER), "auto",
                       *(f"{s}: plain → auto" for s in plan.skews)], left=1)  # fmt: skip
    for strategy, e in auto.items():
        per_skew = []
        for s in plan.skews:
            pair = []
            for pre in ("none", e["choice"]):
                vals = [grid[f, s, by_label[strategy, pre]]["accuracy"] for f in plan.fractions
                        if (f, s, by_label[strategy, "none"]) in grid
                        and (f, s, by_label[strategy, pre]) in grid]  # fmt: skip
                pair.append(statistics.fmean(vals) if vals else None)
            per_skew.append(f"{_a(pair[0])} → {_a(pair[1])}")
        t.add(strategy, e["settings"],
              *(_a(e["mean_worst"].get(p)) if p in e["mean_worst"] else "–" for p in PRE_ORDER),
              f"**{e['choice']}**", *per_skew)  # fmt: skip
    return [*L, t.markdown(), ""]


def write_outputs(rows, meta, plan, out: Path, *, final: bool, note: str = "") -> None:
    """JSON always; the doc section and PNGs when ``final``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_name(JSON_NAME)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_json(rows, meta, plan), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    if final:
        render_pngs(rows, plan, out)
        harness.write_between_markers(
            out, render_markdown(rows, meta, plan, out, note), MARK_START, MARK_END,
            "Byzantine-robust aggregation",
        )  # fmt: skip


#: Meta keys that must match for ``--resume`` to reuse rows.
RESUME_KEYS = ("task", "num-clients", "num-server-rounds", "local-epochs", "bucket-size")


def load_resumable(path: Path, meta: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    """``(rows, sessions)`` of an earlier JSON with the same settings (crashed rows are
    dropped, to be rerun); ``([], [])`` otherwise."""
    if not path.exists():
        return [], []
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return [], []
    old_meta = old.get("meta", {})
    if any(old_meta.get(k) != meta.get(k) for k in RESUME_KEYS):
        LOG.warning("resume: %s has other settings; starting afresh", path)
        return [], []
    rows = [r for r in old.get("rows", []) if r.get("error") is None]
    return rows, list(old_meta.get("sessions", []))


def base_meta(command: str, code: Mapping[str, Any] | None, rounds: int, epochs: int) -> dict:
    return {
        "task": matrix.TASK, "num-clients": NUM_CLIENTS, "num-server-rounds": rounds,
        "local-epochs": epochs, "bucket-size": BUCKET_SIZE, "seeds": list(SEEDS),
        "chance": CHANCE, "command": command, "code": dict(code or {}),
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    harness.log_to_console("%(asctime)s %(message)s")
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.robust --sweep", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--resume", action="store_true", help="reuse the rows of the sweep JSON")
    p.add_argument("--render-only", action="store_true", help="render the doc from the JSON")
    p.add_argument("--workers", type=int, default=1, help="only 1 (cells run in this process)")
    p.add_argument(
        "--budget",
        type=float,
        default=math.inf,
        help="seconds after which no new cell starts (then render; --resume goes on)",
    )
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--local-epochs", type=int, default=LOCAL_EPOCHS)
    harness.add_allow_dirty_flag(p)
    args = p.parse_args(argv)
    if args.workers != 1:
        p.error("--sweep runs its cells in this process, one at a time: use --workers 1")
    plan = Plan(rules())
    json_path = args.out.with_name(JSON_NAME)
    if args.render_only:
        data = json.loads(json_path.read_text())
        write_outputs(data["rows"], data["meta"], plan, args.out, final=True,
                      note=harness.rerender_note("robust --sweep"))  # fmt: skip
        return 0
    session = harness.start("robust", argv, args.out, allow_dirty=args.allow_dirty)
    meta = base_meta(session.command, session.code.to_json(), args.rounds, args.local_epochs)
    rows: list[dict[str, Any]] = []
    sessions: list[dict[str, Any]] = []
    if args.resume:
        rows, sessions = load_resumable(json_path, meta)
        LOG.info("resume: %d rows reused", len(rows))
    this = {"command": session.command, "code": meta["code"], "started": harness.utc_now(),
            "wall-seconds": 0.0, "cells": 0}  # fmt: skip
    meta["sessions"] = [*sessions, this]
    clock = harness.Stopwatch()

    def on_row(row: dict[str, Any]) -> None:
        this["cells"] += 1
        this["wall-seconds"] = round(clock.seconds, 1)
        LOG.info("[%d] %s %-6s %-14s %-28s s%d %s %.1fs", this["cells"], _frac(row["fraction"]),
                 row["skew"], row["attack"], row["aggregator"], row["seed"],
                 row["error"] or f"acc={row['accuracy']:.3f}", row["seconds"])  # fmt: skip
        write_outputs(rows, meta, plan, args.out, final=False)

    def run(cell: SweepCell) -> dict[str, Any]:
        return run_one(
            (cell, plan.by_label[cell.rule], args.rounds, args.local_epochs, NUM_CLIENTS)
        )

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    complete = False
    try:
        with matrix.quiet_process():
            matrix.prepare_process()
            complete = sweep(plan, rows, run=run, on_row=on_row, budget=args.budget)
    finally:
        this["wall-seconds"] = round(clock.seconds, 1)
        this["ended"] = harness.utc_now()
        meta["complete"] = complete
        write_outputs(rows, meta, plan, args.out, final=True)
        LOG.info("coverage: %s", coverage(plan, rows))
    return 0 if complete else 1
