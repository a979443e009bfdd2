"""Where the robustness sweep saw a rule collapse to chance, as data: the run-time warning.

:data:`COLLAPSES` lists, per strategy and pre-aggregator, the conditions under which
``python -m benchmarks.robust --sweep`` measured it ending at chance accuracy under some
attack: a Byzantine fraction of at least ``min_fraction`` and, unless ``max_alpha`` is
``None`` (then already under IID), label skew of Dirichlet α at most ``max_alpha``. It is
the sweep's ``collapse_conditions`` (docs/robustness-sweep.json), copied into
``collapses.json`` next to this module (``python -m strategies.robust.collapse
--from-sweep --update-readme``) so that a run needs no docs; a test keeps the two equal.
A condition is read as monotone: more Byzantine silos or stronger skew than a measured
collapse is assumed to collapse too.

:func:`collapse_warnings` gives the warnings of a run that chooses such a rule under such
a condition (the app logs them at run start, :func:`fl_app.federation.run_federation`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from fl_core.markers import replace_between_markers

__all__ = ["COLLAPSES", "DOC_SECTION", "Collapse", "collapse_warnings", "readme_summary"]

#: Where the evidence is documented.
DOC_SECTION = "docs/robustness.md, 'Collapses and run-time warnings'"


@dataclass(frozen=True)
class Collapse:
    """The sweep saw ``strategy`` (behind ``pre_aggregator``) end at chance under
    ``attack`` with ≥ ``min_fraction`` Byzantine silos and Dirichlet α ≤ ``max_alpha``
    (``None``: under IID already)."""

    strategy: str
    pre_aggregator: str
    min_fraction: float
    max_alpha: float | None
    attack: str

    def applies(
        self, strategy: str, pre_aggregator: str, fraction: float, alpha: float | None, iid: bool
    ) -> bool:
        """A run meets this condition: its strategy and pre-aggregator, a Byzantine
        ``fraction`` ≥ ``min_fraction``, and label skew: an IID run (``iid``) only when
        there is no ``max_alpha``; a Dirichlet ``alpha`` when ``alpha ≤ max_alpha``; an
        unknown skew (``alpha=None`` and not ``iid``) always."""
        if (self.strategy, self.pre_aggregator) != (strategy, pre_aggregator):
            return False
        if fraction <= 0 or fraction < self.min_fraction:
            return False
        if self.max_alpha is None:
            return True
        return not iid and (alpha is None or alpha <= self.max_alpha)

    def condition(self) -> str:
        skew = "any label skew (IID too)" if self.max_alpha is None else (
            f"label skew Dirichlet α ≤ {self.max_alpha:g}"
        )  # fmt: skip
        return f"Byzantine fraction ≥ {self.min_fraction:.0%} and {skew}"


#: The data file of :data:`COLLAPSES`: the sweep's ``collapse_conditions``, copied from
#: docs/robustness-sweep.json (a test keeps the two equal; a FAB ships ``*.json``).
TABLE_FILE = Path(__file__).with_name("collapses.json")


def load_table(path: Path = TABLE_FILE) -> tuple[Collapse, ...]:
    """The collapse conditions of a data file (:data:`TABLE_FILE`)."""
    return tuple(Collapse(**entry) for entry in json.loads(path.read_text(encoding="utf-8")))


#: The sweep's collapse conditions (see the module doc).
COLLAPSES: tuple[Collapse, ...] = load_table()


def collapse_warnings(
    strategy: str,
    pre_aggregator: str,
    fraction: float,
    alpha: float | None,
    *,
    iid: bool = False,
    table: tuple[Collapse, ...] = COLLAPSES,
) -> list[str]:
    """One warning per entry of ``table`` whose condition the run meets
    (:meth:`Collapse.applies`), naming the rule, the condition and the docs section."""
    rule = strategy if pre_aggregator == "none" else f"{strategy} + {pre_aggregator}"
    return [
        f"strategy '{rule}' collapsed to chance accuracy in the robustness sweep under "
        f"{c.condition()} (attack {c.attack}); this run assumes a Byzantine fraction of "
        f"{fraction:.0%}"
        + ("" if alpha is None else f" and Dirichlet α = {alpha:g}")
        + f". See {DOC_SECTION} for a rule that held there."
        for c in table
        if c.applies(strategy, pre_aggregator, fraction, alpha, iid)
    ]


#: The README's per-rule summary of :data:`COLLAPSES` (Strategies section) sits between these.
README_START = (
    "<!-- collapses:start (generated: python -m strategies.robust.collapse --update-readme) -->"
)
README_END = "<!-- collapses:end -->"


def _skew(max_alpha: float | None) -> str:
    return "under IID already" if max_alpha is None else f"with Dirichlet α ≤ {max_alpha:g}"


def readme_summary(table: tuple[Collapse, ...] = COLLAPSES) -> str:
    """One line per rule (and pre-aggregator) that collapsed in the sweep: each measured
    condition, weakest Byzantine fraction first, with the attack that broke it."""
    rules: dict[tuple[str, str], list[Collapse]] = {}
    for c in table:
        rules.setdefault((c.strategy, c.pre_aggregator), []).append(c)
    lines = []
    for (strategy, pre), found in sorted(
        rules.items(), key=lambda kv: (kv[0][0], kv[0][1] != "none", kv[0][1])
    ):
        rule = f"`{strategy}`" if pre == "none" else f"`{strategy}` + {pre}"
        found.sort(key=lambda c: (c.min_fraction, c.max_alpha is None, c.max_alpha or 0.0))
        conditions = "; ".join(
            f"≥ {c.min_fraction * 100:.0f} % Byzantine {_skew(c.max_alpha)} ({c.attack})"
            for c in found
        )
        lines.append(f"- {rule}: {conditions}")
    return "\n".join(lines)


def update_readme(path: str | Path = "README.md") -> None:
    """Rewrite the README's collapse summary between its markers, from :data:`TABLE_FILE`
    as it is on disk now."""
    replace_between_markers(path, README_START, README_END, readme_summary(load_table()))


#: The sweep's JSON, where :func:`sync_from_sweep` reads the evidence.
SWEEP_JSON = Path("docs/robustness-sweep.json")


def _dump(value: object) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False) + "\n"


def sync_from_sweep(
    sweep_json: str | Path = SWEEP_JSON,
    table_file: Path = TABLE_FILE,
    auto_file: Path | None = None,
) -> list[Path]:
    """Copy the sweep's evidence into the data files the app reads at run time: its
    ``collapse_conditions`` into :data:`TABLE_FILE` (this module's warnings) and its
    ``auto_pre_aggregator`` into :data:`strategies.robust.defaults.AUTO_FILE` (the
    ``robust.pre-aggregator = "auto"`` default). Returns the files written."""
    from strategies.robust.defaults import AUTO_FILE

    data = json.loads(Path(sweep_json).read_text(encoding="utf-8"))
    missing = [k for k in ("collapse_conditions", "auto_pre_aggregator") if k not in data]
    if missing:
        raise SystemExit(
            f"{sweep_json} has no {', '.join(missing)}: render it with this code first "
            "(python -m benchmarks.robust --sweep --render-only)"
        )
    auto_file = AUTO_FILE if auto_file is None else auto_file
    table_file.write_text(_dump(data["collapse_conditions"]), encoding="utf-8")
    auto_file.write_text(_dump(data["auto_pre_aggregator"]), encoding="utf-8")
    return [table_file, auto_file]


if __name__ == "__main__":  # pragma: no cover - exercised through the README test
    if "--from-sweep" in sys.argv:
        for written in sync_from_sweep():
            sys.stdout.write(f"wrote {written}\n")
    if "--update-readme" in sys.argv:
        update_readme()
    if not {"--from-sweep", "--update-readme"} & set(sys.argv):
        sys.stdout.write(readme_summary() + "\n")
