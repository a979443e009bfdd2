"""Factories (StrategyConfig → Strategy) for our robust aggregation rules.

Every rule gets the weights ``robust.weights`` allows: uniform by default, or the silos'
claimed ``num-examples`` capped at the cohort median (:mod:`strategies.robust.weights`).

The built-in rules have a factory each below (their documented mapping from the
``robust`` section). Any other rule in :data:`strategies.robust.registry.RULES`, a new file
in ``strategies/robust/rules/`` or a rule from another package's ``fedsilo.rules`` entry
point, becomes a strategy of the same name through :func:`rule_strategy`: its declared
``params`` are read from the ``robust`` section (:data:`ROBUST_PARAMS`), the fields of its
own ``section`` (if it declares one) from ``robust.rule-params``
(:mod:`strategies.robust.rule_params`), and its metadata (family, compatibility) is the
strategy's."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fl_core.registry import Entry, Registry, RegistryError
from strategies import robust as agg
from strategies.flower_builtin import common_kwargs
from strategies.registry import STRATEGIES
from strategies.robust import preaggregators as pre
from strategies.robust.defaults import PreAggregatorChoice, resolve_pre_aggregator
from strategies.robust.registry import RULES
from strategies.robust.rule_params import KEY as RULE_PARAMS_KEY
from strategies.robust.rule_params import check_rule_section, section_params
from strategies.robust.section import RobustSection
from strategies.robust.strategy import RobustAggregation

if TYPE_CHECKING:
    from strategies.config import StrategyConfig


def pre_aggregator_choice(cfg: StrategyConfig) -> PreAggregatorChoice:
    """The pre-aggregator this run uses and why: ``robust.pre-aggregator``, with ``auto``
    resolved (:func:`strategies.robust.defaults.resolve_pre_aggregator`)."""
    configured, num_byzantine = cfg.robust.pre_aggregator, cfg.robust.num_byzantine
    return resolve_pre_aggregator(cfg.strategy, configured, num_byzantine)


def pre_aggregator(cfg: StrategyConfig) -> str:
    """The pre-aggregator this run uses (:func:`pre_aggregator_choice`)."""
    return pre_aggregator_choice(cfg).value


def _pre(cfg: StrategyConfig) -> tuple[list, dict[str, Any]]:
    stages, params = [], {}
    chosen = pre_aggregator(cfg)
    if "nnm" in chosen:
        stages.append(pre.nearest_neighbor_mixing)
        params["num_byzantine"] = cfg.robust.num_byzantine
    if "bucketing" in chosen:
        stages.append(pre.bucketing)
        params["bucket_size"] = cfg.robust.bucket_size
        params["generator"] = None  # replaced by a per-round seeded generator
    return stages, params


#: Returned by a :data:`ROBUST_PARAMS` reader: leave the rule's default.
OMIT = object()

#: How a rule's keyword parameter (as declared in its ``params``) is read from the robust
#: section, with the keys' own meanings: ``num-selected = 0`` leaves the rule's n − f,
#: ``cclip-tau = 0`` passes ``tau=None`` (per round, the median distance), as the built-in
#: factories below do.
ROBUST_PARAMS: dict[str, tuple[str, Callable[[RobustSection], Any]]] = {
    "num_byzantine": ("robust.num-byzantine", lambda r: r.num_byzantine),
    "num_selected": ("robust.num-selected", lambda r: r.num_selected or OMIT),
    "beta": ("robust.trim-beta", lambda r: r.trim_beta),
    "tau": ("robust.cclip-tau", lambda r: r.cclip_tau or None),
    "max_norm": ("robust.clip-norm", lambda r: r.clip_norm),
}


def rule_strategy(entry: Entry) -> Callable[[StrategyConfig], RobustAggregation]:
    """A strategy factory for the registered rule ``entry`` (see module doc)."""
    declared = tuple(entry.extra.get("params", ()))
    unknown = [p for p in declared if p not in ROBUST_PARAMS]
    if unknown:
        raise RegistryError(
            f"aggregation rule '{entry.name}' declares params {unknown} that the robust "
            f"section does not provide; known: {', '.join(ROBUST_PARAMS)}. A parameter of "
            f"its own goes in a section=, set through '{RULE_PARAMS_KEY}'"
        )
    check_rule_section(entry, declared)

    def factory(cfg: StrategyConfig) -> RobustAggregation:
        params = {}
        for name in declared:
            value = ROBUST_PARAMS[name][1](cfg.robust)
            if value is not OMIT:
                params[name] = value
        params.update(section_params(entry, cfg.robust.rule_params))
        strategy = _robust(cfg, entry.obj, **params)
        strategy.use_previous_as_center = bool(entry.extra.get("uses_previous"))
        return strategy

    factory.__doc__ = entry.doc
    factory.__name__ = factory.__qualname__ = entry.name.replace("-", "_")
    factory.__module__ = getattr(entry.obj, "__module__", __name__)
    return factory


def _rule_strategies(strategies: Registry) -> None:
    """Add a strategy for every rule that has none (:meth:`Registry.add_source`)."""
    for entry in RULES.entries():
        if strategies.registered(entry.name) or not entry.extra.get("strategy", True):
            continue
        if entry.extra.get("needs_server_update"):
            continue  # needs the server's own training: only FLTrust's factory provides it
        strategies.add(
            entry.name,
            rule_strategy(entry),
            family=entry.family,
            section=RobustSection,
            compatible=entry.compatible,
            doc=entry.doc,
            origin=entry.origin,
            rule=entry.name,
            config_keys=(
                *(ROBUST_PARAMS[p][0] for p in entry.extra.get("params", ())),
                *((RULE_PARAMS_KEY,) if entry.section is not None else ()),
            ),
        )


STRATEGIES.add_source(_rule_strategies)


def _robust(cfg: StrategyConfig, rule, **rule_params: Any) -> RobustAggregation:
    stages, params = _pre(cfg)
    return RobustAggregation(
        rule,
        pre_aggregators=stages,
        rule_params={**params, **rule_params},
        seed=cfg.seed,
        weights=cfg.robust.weights,
        **common_kwargs(cfg),
    )


@STRATEGIES.register("robust-median", family="robust", section=RobustSection)
def robust_median(cfg: StrategyConfig) -> RobustAggregation:
    """Coordinate-wise median (Yin et al., 2018); weighted only with
    ``robust.weights = "capped"``."""
    return _robust(cfg, agg.coordinate_median)


@STRATEGIES.register("robust-trimmed-mean", family="robust", section=RobustSection)
def robust_trimmed_mean(cfg: StrategyConfig) -> RobustAggregation:
    """Coordinate-wise trimmed mean dropping ``robust.trim-beta`` at each end (Yin et al.,
    2018); behind NNM, which takes ``robust.num-byzantine``, it trims
    ``robust.num-byzantine`` at each end."""
    if "nnm" in pre_aggregator(cfg):
        return _robust(cfg, agg.trimmed_mean)  # num_byzantine reaches both stages
    return _robust(cfg, agg.trimmed_mean, beta=cfg.robust.trim_beta)


@STRATEGIES.register("robust-krum", family="robust", section=RobustSection)
def robust_krum(cfg: StrategyConfig) -> RobustAggregation:
    """Krum (Blanchard et al., 2017)."""
    return _robust(cfg, agg.krum, num_byzantine=cfg.robust.num_byzantine)


@STRATEGIES.register("robust-multikrum", family="robust", section=RobustSection)
def robust_multikrum(cfg: StrategyConfig) -> RobustAggregation:
    """Multi-Krum (Blanchard et al., 2017); ``robust.num-selected = 0`` keeps n − f."""
    params: dict[str, Any] = {"num_byzantine": cfg.robust.num_byzantine}
    if cfg.robust.num_selected:
        params["num_selected"] = cfg.robust.num_selected
    return _robust(cfg, agg.multi_krum, **params)


@STRATEGIES.register("robust-bulyan", family="robust", section=RobustSection)
def robust_bulyan(cfg: StrategyConfig) -> RobustAggregation:
    """Bulyan (El Mhamdi et al., 2018); needs n ≥ 4f + 3."""
    return _robust(cfg, agg.bulyan, num_byzantine=cfg.robust.num_byzantine)


@STRATEGIES.register("geomed", family="robust", section=RobustSection)
def geomed(cfg: StrategyConfig) -> RobustAggregation:
    """Geometric median by smoothed Weiszfeld / RFA (Pillutla et al., 2022)."""
    return _robust(cfg, agg.geometric_median)


@STRATEGIES.register("cclip", family="robust", section=RobustSection)
def cclip(cfg: StrategyConfig) -> RobustAggregation:
    """Centred clipping around the previous aggregate (Karimireddy et al., 2021);
    ``robust.cclip-tau = 0`` takes τ = the median distance of the round's updates from it."""
    strategy = _robust(cfg, agg.centered_clipping, tau=cfg.robust.cclip_tau or None)
    strategy.use_previous_as_center = True
    return strategy


@STRATEGIES.register("norm-clip", family="robust", section=RobustSection)
def norm_clip(cfg: StrategyConfig) -> RobustAggregation:
    """Clip each update to ``robust.clip-norm``, then average."""
    return _robust(cfg, agg.norm_clipping, max_norm=cfg.robust.clip_norm)


@STRATEGIES.register("fltrust", family="robust", section=RobustSection, needs_server_update=True)
def fltrust(cfg: StrategyConfig) -> RobustAggregation:
    """FLTrust (Cao et al., NDSS 2021): the server trains on ``robust.fltrust-root-size`` clean
    rows of its own each round; updates are weighted by ReLU(cosine) to its update and
    rescaled to its norm. The server's training (``server_update_fn``) is the task's, so
    the app provides it (``needs_server_update``: :func:`fl_app.federation.root_update_fn`)."""
    return _robust(cfg, agg.fltrust)
