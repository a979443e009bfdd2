"""Factories (RunConfig → Strategy) for our robust aggregation rules.

Every rule gets the weights ``robust-weights`` allows: uniform by default, or the silos'
claimed ``num-examples`` capped at the cohort median (:mod:`strategies.robust.weights`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord

from strategies import robust as agg
from strategies.flower_builtin import common_kwargs
from strategies.registry import STRATEGIES
from strategies.robust import preaggregators as pre
from strategies.robust.strategy import RobustAggregation

if TYPE_CHECKING:
    from fl_app.config import RunConfig


def _pre(cfg: RunConfig) -> tuple[list, dict[str, Any]]:
    stages, params = [], {}
    if "nnm" in cfg.pre_aggregator:
        stages.append(pre.nearest_neighbor_mixing)
        params["num_byzantine"] = cfg.num_byzantine
    if "bucketing" in cfg.pre_aggregator:
        stages.append(pre.bucketing)
        params["bucket_size"] = cfg.bucket_size
        params["generator"] = None  # replaced by a per-round seeded generator
    return stages, params


def _robust(cfg: RunConfig, rule, **rule_params: Any) -> RobustAggregation:
    stages, params = _pre(cfg)
    return RobustAggregation(
        rule,
        pre_aggregators=stages,
        rule_params={**params, **rule_params},
        seed=cfg.seed,
        weights=cfg.robust_weights,
        **common_kwargs(cfg),
    )


@STRATEGIES.register("robust-median", family="robust")
def robust_median(cfg: RunConfig) -> RobustAggregation:
    """Coordinate-wise median (Yin et al., 2018); weighted only with
    ``robust-weights = "capped"``."""
    return _robust(cfg, agg.coordinate_median)


@STRATEGIES.register("robust-trimmed-mean", family="robust")
def robust_trimmed_mean(cfg: RunConfig) -> RobustAggregation:
    """Coordinate-wise trimmed mean dropping ``trim-beta`` at each end (Yin et al., 2018);
    behind NNM, which takes ``num-byzantine``, it trims ``num-byzantine`` at each end."""
    if "nnm" in cfg.pre_aggregator:
        return _robust(cfg, agg.trimmed_mean)  # num_byzantine reaches both stages
    return _robust(cfg, agg.trimmed_mean, beta=cfg.trim_beta)


@STRATEGIES.register("robust-krum", family="robust")
def robust_krum(cfg: RunConfig) -> RobustAggregation:
    """Krum (Blanchard et al., 2017)."""
    return _robust(cfg, agg.krum, num_byzantine=cfg.num_byzantine)


@STRATEGIES.register("robust-multikrum", family="robust")
def robust_multikrum(cfg: RunConfig) -> RobustAggregation:
    """Multi-Krum (Blanchard et al., 2017); ``num-selected = 0`` keeps n − f."""
    params: dict[str, Any] = {"num_byzantine": cfg.num_byzantine}
    if cfg.num_selected:
        params["num_selected"] = cfg.num_selected
    return _robust(cfg, agg.multi_krum, **params)


@STRATEGIES.register("robust-bulyan", family="robust")
def robust_bulyan(cfg: RunConfig) -> RobustAggregation:
    """Bulyan (El Mhamdi et al., 2018); needs n ≥ 4f + 3."""
    return _robust(cfg, agg.bulyan, num_byzantine=cfg.num_byzantine)


@STRATEGIES.register("geomed", family="robust")
def geomed(cfg: RunConfig) -> RobustAggregation:
    """Geometric median by smoothed Weiszfeld / RFA (Pillutla et al., 2022)."""
    return _robust(cfg, agg.geometric_median)


@STRATEGIES.register("cclip", family="robust")
def cclip(cfg: RunConfig) -> RobustAggregation:
    """Centred clipping around the previous aggregate (Karimireddy et al., 2021);
    ``cclip-tau = 0`` takes τ = the median distance of the round's updates from it."""
    strategy = _robust(cfg, agg.centered_clipping, tau=cfg.cclip_tau or None)
    strategy.use_previous_as_center = True
    return strategy


@STRATEGIES.register("norm-clip", family="robust")
def norm_clip(cfg: RunConfig) -> RobustAggregation:
    """Clip each update to ``clip-norm``, then average."""
    return _robust(cfg, agg.norm_clipping, max_norm=cfg.clip_norm)


@STRATEGIES.register("fltrust", family="robust")
def fltrust(cfg: RunConfig) -> RobustAggregation:
    """FLTrust (Cao et al., NDSS 2021): the server trains on ``fltrust-root-size`` clean
    rows of its own each round; updates are weighted by ReLU(cosine) to its update and
    rescaled to its norm."""
    from fl_core.seeding import derive_seed
    from tasks import get_task

    task = get_task(cfg.task)
    root = task.load_root(cfg, cfg.fltrust_root_size)

    def server_update(global_arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        model = task.build_model()
        model.load_state_dict(global_arrays.to_torch_state_dict())
        # Seeded by (seed, round), not by a counter: a resumed run trains the same.
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "fltrust", server_round))
        task.train(model, root, cfg, generator=generator)
        return ArrayRecord(model.state_dict())

    strategy = _robust(cfg, agg.fltrust)
    strategy.server_update_fn = server_update
    return strategy
