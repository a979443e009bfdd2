"""Factories (RunConfig → Strategy) for our robust aggregation rules.

Every rule gets the weights ``robust.weights`` allows: uniform by default, or the silos'
claimed ``num-examples`` capped at the cohort median (:mod:`strategies.robust.weights`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from flwr.app import ArrayRecord
from pydantic import Field

from fl_core.config import Section
from strategies.flower_builtin import common_kwargs
from strategies.robust import aggregators as agg
from strategies.robust import preaggregators as pre
from strategies.robust.strategy import RobustAggregation

if TYPE_CHECKING:
    from fl_app.config import RunConfig


class RobustSection(Section):
    """Robust aggregation (Flower's and ours) and the checks every update passes."""

    trim_beta: float = Field(
        0.2, ge=0, lt=0.5, description="Fraction trimmed at each end (FedTrimmedAvg)."
    )
    num_byzantine: int = Field(
        0, ge=0, description="Assumed Byzantine silos f (Krum, MultiKrum, Bulyan)."
    )
    num_selected: int = Field(0, ge=0, description="Updates MultiKrum averages (0 = n - f).")
    pre_aggregator: Literal["none", "nnm", "bucketing", "nnm+bucketing"] = Field(
        "none", description="Pre-aggregation in front of our robust rules (NNM, bucketing)."
    )
    bucket_size: int = Field(2, ge=1, description="Updates averaged per bucket (bucketing).")
    weights: Literal["uniform", "capped"] = Field(
        "uniform",
        description="Weights of the robust rules. A silo's `num-examples` is a claim a "
        "Byzantine silo can inflate (one silo claiming 1 000× the examples *is* a weighted "
        "median), so `uniform` (as Flower's FedMedian, Krum, Bulyan) ignores it; `capped` "
        "weights by the claims, each capped at the cohort's median claim.",
    )
    cclip_tau: float = Field(
        0.0,
        ge=0,
        description="Clipping radius τ of centred clipping; 0 = per round, the median distance "
        "of the updates from the previous aggregate (adapts to the update scale).",
    )
    clip_norm: float = Field(
        1.0, gt=0, description="Update-norm bound C of norm-clip (DP clipping: `dp.clip-norm`)."
    )
    fltrust_root_size: int = Field(
        100, ge=1, description="Rows of the server's root data set (FLTrust)."
    )
    max_update_norm_ratio: float = Field(
        10.0,
        ge=0,
        description="Reject an update whose norm exceeds this × the cohort median (0 = off).",
    )
    max_update_bytes: int = Field(
        0,
        ge=0,
        description="Reject a reply whose payload exceeds this many bytes (0 = twice the "
        "global model's size + 1 MiB).",
    )


def _pre(cfg: RunConfig) -> tuple[list, dict[str, Any]]:
    stages, params = [], {}
    if "nnm" in cfg.robust.pre_aggregator:
        stages.append(pre.nearest_neighbor_mixing)
        params["num_byzantine"] = cfg.robust.num_byzantine
    if "bucketing" in cfg.robust.pre_aggregator:
        stages.append(pre.bucketing)
        params["bucket_size"] = cfg.robust.bucket_size
        params["generator"] = None  # replaced by a per-round seeded generator
    return stages, params


def _robust(cfg: RunConfig, rule, **rule_params: Any) -> RobustAggregation:
    stages, params = _pre(cfg)
    return RobustAggregation(
        rule,
        pre_aggregators=stages,
        rule_params={**params, **rule_params},
        seed=cfg.seed,
        weights=cfg.robust.weights,
        **common_kwargs(cfg),
    )


def robust_median(cfg: RunConfig) -> RobustAggregation:
    """Coordinate-wise median (Yin et al., 2018); weighted only with
    ``robust.weights = "capped"``."""
    return _robust(cfg, agg.coordinate_median)


def robust_trimmed_mean(cfg: RunConfig) -> RobustAggregation:
    """Coordinate-wise trimmed mean dropping ``robust.trim-beta`` at each end (Yin et al.,
    2018); behind NNM, which takes ``robust.num-byzantine``, it trims
    ``robust.num-byzantine`` at each end."""
    if "nnm" in cfg.robust.pre_aggregator:
        return _robust(cfg, agg.trimmed_mean)  # num_byzantine reaches both stages
    return _robust(cfg, agg.trimmed_mean, beta=cfg.robust.trim_beta)


def robust_krum(cfg: RunConfig) -> RobustAggregation:
    """Krum (Blanchard et al., 2017)."""
    return _robust(cfg, agg.krum, num_byzantine=cfg.robust.num_byzantine)


def robust_multikrum(cfg: RunConfig) -> RobustAggregation:
    """Multi-Krum (Blanchard et al., 2017); ``robust.num-selected = 0`` keeps n − f."""
    params: dict[str, Any] = {"num_byzantine": cfg.robust.num_byzantine}
    if cfg.robust.num_selected:
        params["num_selected"] = cfg.robust.num_selected
    return _robust(cfg, agg.multi_krum, **params)


def robust_bulyan(cfg: RunConfig) -> RobustAggregation:
    """Bulyan (El Mhamdi et al., 2018); needs n ≥ 4f + 3."""
    return _robust(cfg, agg.bulyan, num_byzantine=cfg.robust.num_byzantine)


def geomed(cfg: RunConfig) -> RobustAggregation:
    """Geometric median by smoothed Weiszfeld / RFA (Pillutla et al., 2022)."""
    return _robust(cfg, agg.geometric_median)


def cclip(cfg: RunConfig) -> RobustAggregation:
    """Centred clipping around the previous aggregate (Karimireddy et al., 2021);
    ``robust.cclip-tau = 0`` takes τ = the median distance of the round's updates from it."""
    strategy = _robust(cfg, agg.centered_clipping, tau=cfg.robust.cclip_tau or None)
    strategy.use_previous_as_center = True
    return strategy


def norm_clip(cfg: RunConfig) -> RobustAggregation:
    """Clip each update to ``robust.clip-norm``, then average."""
    return _robust(cfg, agg.norm_clipping, max_norm=cfg.robust.clip_norm)


def fltrust(cfg: RunConfig) -> RobustAggregation:
    """FLTrust (Cao et al., NDSS 2021): the server trains on ``robust.fltrust-root-size`` clean
    rows of its own each round; updates are weighted by ReLU(cosine) to its update and
    rescaled to its norm."""
    from fl_core.seeding import derive_seed
    from tasks import get_task

    task = get_task(cfg.task)
    root = task.load_root(cfg.data, cfg.seed, cfg.robust.fltrust_root_size)

    def server_update(global_arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        model = task.build_model()
        model.load_state_dict(global_arrays.to_torch_state_dict())
        # Seeded by (seed, round), not by a counter: a resumed run trains the same.
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "fltrust", server_round))
        task.train(model, root, cfg.training, generator=generator)
        return ArrayRecord(model.state_dict())

    strategy = _robust(cfg, agg.fltrust)
    strategy.server_update_fn = server_update
    return strategy
