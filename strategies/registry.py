"""Strategy registry: name → factory(StrategyConfig) → Flower ``Strategy``, with metadata.

A strategy registers itself in its own file::

    from strategies.registry import MEAN_COMPATIBLE, STRATEGIES

    @STRATEGIES.register("my-avg", family="mean-based", compatible=MEAN_COMPATIBLE)
    def my_avg(cfg): ...

``family`` is ``"mean-based"`` (a weighted mean of the updates, as FedAvg), ``"robust"``
(selects, orders or reweights individual updates against attackers) or ``"fairness"``
(reweights updates towards the worse-served silos, as q-FedAvg). ``compatible`` says which
cross-cutting features the strategy works with: ``central-dp`` (DP-FedAvg's clipping
and noise bound one silo's influence only under a mean), ``secagg`` (the server sees
only the sum) and ``topk`` (sparse updates with different supports). The run-config
checks ask this metadata instead of listing names. ``needs_loss_before=True`` asks every
silo to report the received model's loss on its training data before it trains
(``fl_core.records.LOSS_BEFORE_KEY``; q-FedAvg), which local DP does not cover.

Built-ins: Flower's strategies (:mod:`strategies.flower_builtin`) and ours
(:mod:`strategies.robust.factories`); a separate package registers through the
entry-point group ``fedsilo.strategies``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING

from flwr.serverapp.strategy import Strategy

from fl_core.registry import Registry

if TYPE_CHECKING:
    from strategies.config import StrategyConfig

StrategyFactory = Callable[["StrategyConfig"], Strategy]

#: Features a mean-based strategy works with (see module doc).
MEAN_COMPATIBLE = MappingProxyType({"central-dp": True, "secagg": True, "topk": True})

STRATEGIES: Registry[StrategyFactory] = Registry(
    "strategy",
    group="fedsilo.strategies",
    builtins=("strategies.flower_builtin", "strategies.robust.factories"),
)


def available_strategies() -> list[str]:
    """Registered strategy names, in registry order."""
    return list(STRATEGIES)


def build_strategy(cfg: StrategyConfig) -> Strategy:
    """The strategy named by ``cfg.strategy``, configured from ``cfg``."""
    return STRATEGIES[cfg.strategy](cfg)
