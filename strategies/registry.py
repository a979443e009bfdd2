"""Strategy registry: name → factory(RunConfig) → Flower ``Strategy``.

Add a strategy: write ``strategies/<name>.py`` (a pure aggregation function plus a thin
Flower ``Strategy`` and a factory taking the run config), then add one line below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flwr.serverapp.strategy import Strategy

from strategies import flower_builtin as flower
from strategies.robust import factories as robust

if TYPE_CHECKING:
    from fl_app.config import RunConfig

StrategyFactory = Callable[["RunConfig"], Strategy]

STRATEGIES: dict[str, StrategyFactory] = {
    # Flower's own (flwr.serverapp.strategy)
    "fedavg": flower.fedavg,
    "fedprox": flower.fedprox,
    "fedadam": flower.fedadam,
    "fedyogi": flower.fedyogi,
    "fedadagrad": flower.fedadagrad,
    "fedavgm": flower.fedavgm,
    "fedmedian": flower.fedmedian,
    "fedtrimmedavg": flower.fedtrimmedavg,
    "krum": flower.krum,
    "multikrum": flower.multikrum,
    "bulyan": flower.bulyan,
    # Ours: robust rules on stacked updates (strategies/robust), `robust.pre-aggregator` applies
    "robust-median": robust.robust_median,
    "robust-trimmed-mean": robust.robust_trimmed_mean,
    "robust-krum": robust.robust_krum,
    "robust-multikrum": robust.robust_multikrum,
    "robust-bulyan": robust.robust_bulyan,
    "geomed": robust.geomed,
    "cclip": robust.cclip,
    "norm-clip": robust.norm_clip,
    "fltrust": robust.fltrust,
}


def available_strategies() -> list[str]:
    """Registered strategy names, in registry order."""
    return list(STRATEGIES)


def build_strategy(cfg: RunConfig) -> Strategy:
    """The strategy named by ``cfg.strategy``, configured from ``cfg``."""
    try:
        factory = STRATEGIES[cfg.strategy]
    except KeyError:
        raise KeyError(
            f"unknown strategy '{cfg.strategy}'; choose one of: {', '.join(STRATEGIES)}"
        ) from None
    return factory(cfg)
