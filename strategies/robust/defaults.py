"""``robust.pre-aggregator = "auto"`` (the default): the pre-aggregator the robustness sweep
measured best for the chosen rule.

:data:`AUTO` maps each of our rules to the pre-aggregator (``none``, ``nnm`` or
``bucketing``) with the highest worst-case accuracy, averaged over the sweep's (Byzantine
fraction, label skew) settings: the sweep's ``auto_pre_aggregator``
(docs/robustness-sweep.json, ``python -m benchmarks.robust --sweep``), copied into
``auto_pre_aggregator.json`` next to this module by
``python -m strategies.robust.collapse --from-sweep`` (a test keeps the two equal).

:func:`resolve_pre_aggregator` turns the configured value into the one a run uses:

* an explicit ``none``, ``nnm``, ``bucketing`` or ``nnm+bucketing`` is kept;
* ``auto`` with ``robust.num-byzantine = 0`` is ``none``: nearest-neighbour mixing averages
  each update with its n − f nearest, all n of them when f = 0, which would turn every
  rule into the plain mean (so NNM needs the number of Byzantine silos the run defends
  against);
* ``auto`` for a rule the sweep measured is the sweep's choice; for any other strategy
  (FedAvg, Flower's strategies, a rule the sweep has not run) ``none``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AUTO", "AUTO_FILE", "PreAggregatorChoice", "describe_means", "resolve_pre_aggregator"]

#: The data file of :data:`AUTO` (a FAB ships ``*.json``).
AUTO_FILE = Path(__file__).with_name("auto_pre_aggregator.json")

#: Rule → the sweep's pre-aggregator for it, with the evidence:
#: ``{"choice": ..., "mean_worst": {pre: mean worst-case accuracy}, "settings": k}``.
AUTO: dict[str, dict] = json.loads(AUTO_FILE.read_text(encoding="utf-8"))

#: Where the evidence is documented.
DOC_SECTION = "docs/robustness.md, 'The default pre-aggregator'"


@dataclass(frozen=True)
class PreAggregatorChoice:
    """The pre-aggregator a run uses and, for ``auto``, why."""

    value: str
    configured: str
    reason: str = ""

    @property
    def auto(self) -> bool:
        return self.configured == "auto"


def describe_means(evidence: dict) -> str:
    """``"none 0.39, nnm 0.50, …"``: an :data:`AUTO` entry's mean worst-case accuracies."""
    return ", ".join(f"{pre} {acc:.2f}" for pre, acc in evidence["mean_worst"].items())


def resolve_pre_aggregator(
    strategy: str, configured: str, num_byzantine: int, table: dict[str, dict] | None = None
) -> PreAggregatorChoice:
    """The pre-aggregator of a run of ``strategy`` with ``robust.pre-aggregator =
    configured`` and ``robust.num-byzantine = num_byzantine`` (see the module doc)."""
    if configured != "auto":
        return PreAggregatorChoice(configured, configured)
    table = AUTO if table is None else table
    evidence = table.get(strategy)
    if evidence is None:
        return PreAggregatorChoice(
            "none", configured, f"the robustness sweep has not measured '{strategy}' behind a "
            "pre-aggregator",
        )  # fmt: skip
    if num_byzantine <= 0:
        return PreAggregatorChoice(
            "none", configured, "robust.num-byzantine = 0: nearest-neighbour mixing averages "
            "each update with its n − f nearest (all of them at f = 0); set "
            "robust.num-byzantine to the Byzantine silos to defend against",
        )  # fmt: skip
    means = describe_means(evidence)
    return PreAggregatorChoice(
        evidence["choice"], configured,
        f"mean worst-case accuracy over the robustness sweep's {evidence['settings']} "
        f"(Byzantine fraction, label skew) settings: {means} ({DOC_SECTION})",
    )  # fmt: skip
