"""Factories for Flower's own strategies (``flwr.serverapp.strategy``), configured from
the typed run config. Each factory: ``RunConfig -> Strategy``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flwr.serverapp import strategy as fl

from strategies.metrics import weighted_mean_metrics

if TYPE_CHECKING:
    from fl_app.config import RunConfig


def common_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """Sampling and metric-aggregation arguments every FedAvg-family strategy takes."""
    return {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_train_nodes,
        "min_evaluate_nodes": cfg.min_evaluate_nodes,
        "min_available_nodes": cfg.min_available_nodes,
        "train_metrics_aggr_fn": weighted_mean_metrics,
        "evaluate_metrics_aggr_fn": weighted_mean_metrics,
    }


def _adaptive(cfg: RunConfig) -> dict[str, Any]:
    return {"eta": cfg.server_learning_rate, "eta_l": cfg.learning_rate, "tau": cfg.tau}


def fedavg(cfg: RunConfig) -> fl.Strategy:
    """FedAvg (McMahan et al., 2017)."""
    return fl.FedAvg(**common_kwargs(cfg))


def fedprox(cfg: RunConfig) -> fl.Strategy:
    """FedProx (Li et al., 2020); clients add the proximal term with ``proximal-mu``."""
    return fl.FedProx(proximal_mu=cfg.proximal_mu, **common_kwargs(cfg))


def fedadam(cfg: RunConfig) -> fl.Strategy:
    """FedAdam (Reddi et al., 2021)."""
    return fl.FedAdam(
        beta_1=cfg.beta1, beta_2=cfg.beta2, **_adaptive(cfg), **common_kwargs(cfg)
    )


def fedyogi(cfg: RunConfig) -> fl.Strategy:
    """FedYogi (Reddi et al., 2021)."""
    return fl.FedYogi(
        beta_1=cfg.beta1, beta_2=cfg.beta2, **_adaptive(cfg), **common_kwargs(cfg)
    )


def fedadagrad(cfg: RunConfig) -> fl.Strategy:
    """FedAdagrad (Reddi et al., 2021)."""
    return fl.FedAdagrad(**_adaptive(cfg), **common_kwargs(cfg))


def fedavgm(cfg: RunConfig) -> fl.Strategy:
    """FedAvgM, server momentum (Hsu et al., 2019)."""
    return fl.FedAvgM(
        server_learning_rate=cfg.server_learning_rate,
        server_momentum=cfg.server_momentum,
        **common_kwargs(cfg),
    )


def fedmedian(cfg: RunConfig) -> fl.Strategy:
    """Coordinate-wise median (Yin et al., 2018)."""
    return fl.FedMedian(**common_kwargs(cfg))


def fedtrimmedavg(cfg: RunConfig) -> fl.Strategy:
    """Coordinate-wise trimmed mean (Yin et al., 2018)."""
    return fl.FedTrimmedAvg(beta=cfg.trim_beta, **common_kwargs(cfg))


def krum(cfg: RunConfig) -> fl.Strategy:
    """Krum (Blanchard et al., 2017)."""
    return fl.Krum(num_malicious_nodes=cfg.num_byzantine, **common_kwargs(cfg))


class _MultiKrumNMinusF(fl.MultiKrum):
    """MultiKrum that averages the n − f best-scored of the n replies of each round."""

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        n = sum(not r.has_error() for r in replies)
        self.num_nodes_to_select = max(1, n - self.num_malicious_nodes)
        return super().aggregate_train(server_round, replies)


def multikrum(cfg: RunConfig) -> fl.Strategy:
    """Multi-Krum (Blanchard et al., 2017); ``num-selected = 0`` keeps n − f updates."""
    kwargs = {"num_malicious_nodes": cfg.num_byzantine, **common_kwargs(cfg)}
    if cfg.num_selected == 0:
        return _MultiKrumNMinusF(**kwargs)
    return fl.MultiKrum(num_nodes_to_select=cfg.num_selected, **kwargs)


def bulyan(cfg: RunConfig) -> fl.Strategy:
    """Bulyan (El Mhamdi et al., 2018); needs n ≥ 4f + 3 silos per round."""
    return fl.Bulyan(num_malicious_nodes=cfg.num_byzantine, **common_kwargs(cfg))
