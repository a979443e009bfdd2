"""Factories for Flower's own strategies (``flwr.serverapp.strategy``), configured from
the typed run config. Each factory: ``StrategyConfig -> Strategy``.

Flower's FedMedian, FedTrimmedAvg, Krum and Bulyan ignore the silos' claimed
``num-examples``; its MultiKrum averages the selected updates weighted by them, so a
selected Byzantine silo claiming 1 000 × the examples would be the average. Ours averages
them with the weights ``robust.weights`` allows (:mod:`strategies.robust.weights`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flwr.serverapp import strategy as fl
from flwr.serverapp.strategy.multikrum import select_multikrum
from pydantic import Field

from fl_core.config import Section
from fl_core.records import LOSS_BEFORE_KEY
from strategies.flatten import stack, unflatten
from strategies.metrics import weighted_mean_metrics
from strategies.registry import MEAN_COMPATIBLE, STRATEGIES
from strategies.robust.rules.mean import weighted_mean
from strategies.robust.section import RobustSection
from strategies.robust.weights import trusted_weights

if TYPE_CHECKING:
    from strategies.config import StrategyConfig


class ServerSection(Section):
    """The server-side optimiser of FedAdam, FedYogi, FedAdagrad and FedAvgM, and
    q-FedAvg's fairness parameter."""

    learning_rate: float = Field(
        0.1, gt=0, description="Server step size η (FedAdam, FedYogi, FedAdagrad, FedAvgM)."
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="Server momentum (FedAvgM).")
    beta1: float = Field(0.9, ge=0, lt=1, description="First-moment decay (FedAdam, FedYogi).")
    beta2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay (FedAdam, FedYogi).")
    tau: float = Field(1e-3, gt=0, description="Adaptivity ε (FedAdam, FedYogi, FedAdagrad).")
    q: float = Field(
        0.1,
        ge=0,
        le=100,
        description="q-FedAvg's fairness q: silos with a higher loss weigh more, as loss^q "
        "(0 = plain FedAvg-like steps; larger = fairer, slower).",
    )


def common_kwargs(cfg: StrategyConfig) -> dict[str, Any]:
    """Sampling and metric-aggregation arguments every FedAvg-family strategy takes."""
    return {
        "fraction_train": cfg.sampling.fraction_train,
        "fraction_evaluate": cfg.sampling.fraction_evaluate,
        "min_train_nodes": cfg.sampling.min_train_nodes,
        "min_evaluate_nodes": cfg.sampling.min_evaluate_nodes,
        "min_available_nodes": cfg.sampling.min_available_nodes,
        "train_metrics_aggr_fn": weighted_mean_metrics,
        "evaluate_metrics_aggr_fn": weighted_mean_metrics,
    }


def _adaptive(cfg: StrategyConfig) -> dict[str, Any]:
    return {
        "eta": cfg.server.learning_rate,
        "eta_l": cfg.training.learning_rate,
        "tau": cfg.server.tau,
    }


@STRATEGIES.register("fedavg", family="mean-based", compatible=MEAN_COMPATIBLE)
def fedavg(cfg: StrategyConfig) -> fl.Strategy:
    """FedAvg (McMahan et al., 2017)."""
    return fl.FedAvg(**common_kwargs(cfg))


@STRATEGIES.register("fedprox", family="mean-based", compatible=MEAN_COMPATIBLE)
def fedprox(cfg: StrategyConfig) -> fl.Strategy:
    """FedProx (Li et al., 2020); clients add the proximal term with ``training.proximal-mu``."""
    return fl.FedProx(proximal_mu=cfg.training.proximal_mu, **common_kwargs(cfg))


@STRATEGIES.register(
    "fedadam", family="mean-based", compatible=MEAN_COMPATIBLE, section=ServerSection
)
def fedadam(cfg: StrategyConfig) -> fl.Strategy:
    """FedAdam (Reddi et al., 2021)."""
    return fl.FedAdam(
        beta_1=cfg.server.beta1, beta_2=cfg.server.beta2, **_adaptive(cfg), **common_kwargs(cfg)
    )


@STRATEGIES.register(
    "fedyogi", family="mean-based", compatible=MEAN_COMPATIBLE, section=ServerSection
)
def fedyogi(cfg: StrategyConfig) -> fl.Strategy:
    """FedYogi (Reddi et al., 2021)."""
    return fl.FedYogi(
        beta_1=cfg.server.beta1, beta_2=cfg.server.beta2, **_adaptive(cfg), **common_kwargs(cfg)
    )


@STRATEGIES.register(
    "fedadagrad", family="mean-based", compatible=MEAN_COMPATIBLE, section=ServerSection
)
def fedadagrad(cfg: StrategyConfig) -> fl.Strategy:
    """FedAdagrad (Reddi et al., 2021)."""
    return fl.FedAdagrad(**_adaptive(cfg), **common_kwargs(cfg))


@STRATEGIES.register(
    "fedavgm", family="mean-based", compatible=MEAN_COMPATIBLE, section=ServerSection
)
def fedavgm(cfg: StrategyConfig) -> fl.Strategy:
    """FedAvgM, server momentum (Hsu et al., 2019)."""
    return fl.FedAvgM(
        server_learning_rate=cfg.server.learning_rate,
        server_momentum=cfg.server.momentum,
        **common_kwargs(cfg),
    )


#: q-FedAvg reweights each update by its silo's loss before training, loss^q, and scales
#: the step by a per-silo norm term: not a clipped mean (central DP's sensitivity bound
#: does not hold, and the losses would be released unnoised), and the server needs each
#: silo's own update norm and loss (secure aggregation hides them). Linear in the
#: updates, so top-k's sparse updates are fine.
QFFL_COMPATIBLE = {"central-dp": False, "secagg": False, "topk": True}


@STRATEGIES.register(
    "qfedavg",
    family="fairness",
    compatible=QFFL_COMPATIBLE,
    section=ServerSection,
    needs_loss_before=True,
)
def qfedavg(cfg: StrategyConfig) -> fl.Strategy:
    """q-FedAvg, q-FFL fair resource allocation (Li et al., ICLR 2020b): silos with a higher loss
    weigh more (``server.q``); the Lipschitz estimate is 1 / ``training.learning-rate``.
    Each silo reports its loss before training (``needs_loss_before``)."""
    return fl.QFedAvg(
        client_learning_rate=cfg.training.learning_rate,
        q=cfg.server.q,
        train_loss_key=LOSS_BEFORE_KEY,
        **common_kwargs(cfg),
    )


@STRATEGIES.register("fedmedian", family="robust", section=RobustSection)
def fedmedian(cfg: StrategyConfig) -> fl.Strategy:
    """Coordinate-wise median (Yin et al., 2018)."""
    return fl.FedMedian(**common_kwargs(cfg))


@STRATEGIES.register("fedtrimmedavg", family="robust", section=RobustSection)
def fedtrimmedavg(cfg: StrategyConfig) -> fl.Strategy:
    """Coordinate-wise trimmed mean (Yin et al., 2018)."""
    return fl.FedTrimmedAvg(beta=cfg.robust.trim_beta, **common_kwargs(cfg))


@STRATEGIES.register("krum", family="robust", section=RobustSection)
def krum(cfg: StrategyConfig) -> fl.Strategy:
    """Krum (Blanchard et al., 2017)."""
    return fl.Krum(num_malicious_nodes=cfg.robust.num_byzantine, **common_kwargs(cfg))


class _MultiKrum(fl.MultiKrum):
    """Flower's MultiKrum selection; the selected updates are averaged with the weights
    ``weights`` allows (uniform or capped claims, not the raw claims). ``n_minus_f`` keeps
    the n − f best-scored of the n replies of each round."""

    def __init__(self, *, weights: str = "uniform", n_minus_f: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        trusted_weights([1.0], weights)  # refuse an unknown mode at construction
        self.weights = weights
        self.n_minus_f = n_minus_f

    def aggregate_train(self, server_round, replies):
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        if self.n_minus_f:
            self.num_nodes_to_select = max(1, len(contents) - self.num_malicious_nodes)
        selected = select_multikrum(
            contents,
            num_malicious_nodes=self.num_malicious_nodes,
            num_nodes_to_select=self.num_nodes_to_select,
        )
        rows = [next(i for i, c in enumerate(contents) if c is s) for s in selected]
        claimed = [
            float(next(iter(c.metric_records.values()))[self.weighted_by_key]) for c in contents
        ]
        cohort = trusted_weights(claimed, self.weights)  # capped at the whole cohort's median
        weights = None if cohort is None else cohort[rows]
        if weights is not None and float(weights.sum()) <= 0:
            weights = None
        matrix, layout = stack([next(iter(c.array_records.values())) for c in selected])
        arrays = unflatten(weighted_mean(matrix, weights), layout)
        return arrays, self.train_metrics_aggr_fn(selected, self.weighted_by_key)


@STRATEGIES.register("multikrum", family="robust", section=RobustSection)
def multikrum(cfg: StrategyConfig) -> fl.Strategy:
    """Multi-Krum (Blanchard et al., 2017); ``robust.num-selected = 0`` keeps n − f updates. The
    selected updates are averaged with ``robust.weights``, not the raw claims."""
    kwargs = {
        "num_malicious_nodes": cfg.robust.num_byzantine,
        "weights": cfg.robust.weights,
        **common_kwargs(cfg),
    }
    if cfg.robust.num_selected == 0:
        return _MultiKrum(n_minus_f=True, **kwargs)
    return _MultiKrum(num_nodes_to_select=cfg.robust.num_selected, **kwargs)


@STRATEGIES.register("bulyan", family="robust", section=RobustSection)
def bulyan(cfg: StrategyConfig) -> fl.Strategy:
    """Bulyan (El Mhamdi et al., 2018); needs n ≥ 4f + 3 silos per round."""
    return fl.Bulyan(num_malicious_nodes=cfg.robust.num_byzantine, **common_kwargs(cfg))
