"""Central (client-level) differential privacy: DP-FedAvg with a privacy accountant.

Papers: McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private Recurrent
Language Models" (ICLR 2018, https://arxiv.org/abs/1710.06963) for DP-FedAvg; Andrew,
Thakkar, McMahan and Ramaswamy, "Differentially Private Learning with Adaptive Clipping"
(NeurIPS 2021, https://arxiv.org/abs/1905.03871) for the adaptive clipping norm.

Each round the server

1. takes every reply's model *delta* (reply arrays − current global arrays),
2. clips each delta to L2 norm ≤ C (:func:`clip_updates`), so one client moves the sum by
   at most C,
3. adds Gaussian noise N(0, (σC)²) to the sum (:func:`gaussian_noise_sum`),
4. divides by a fixed, public denominator m (:func:`dp_fedavg_aggregate`): the number of
   clients the round sampled, or q·N, the expected cohort of Poisson sampling. Dividing by
   the number of replies instead would make the denominator depend on who took part, and
   example-count weights would make one client's influence depend on its (unbounded) data
   size: both break the sensitivity C/m the noise is calibrated to. Every client therefore
   counts once, whatever its ``num-examples``.
5. adds the noised mean delta to the global model (through the wrapped strategy, so a server
   optimiser such as FedAdam acts on it: post-processing keeps the guarantee),
6. steps its :class:`~strategies.privacy.accountant.FederatedAccountant` once and reports
   the cumulative ε.

Sampling and accounting. By default the wrapped strategy samples the clients (Flower draws
a fixed number without replacement, from a seed that is part of the public run config) and
every round is accounted at sample rate 1: no amplification by sampling, exact for any
sampling. With ``sampling_amplification=True`` DPFedAvg draws the cohort itself by *secret
Poisson sampling*: every one of the N clients is taken independently with probability q,
from a generator seeded by the OS (``sampling_generator``), so the cohort size varies and
may be 0; the noised sum is divided by the fixed q·N and each round is accounted as the
Poisson-subsampled Gaussian mechanism at rate q, which is what the accountants compute. A
round whose cohort is empty still releases the noise (and is accounted): releasing nothing
would tell who was (not) sampled.

Privacy unit and caveats: a *client* (silo) and all its data (add/remove one client). The
released global models are protected; training metrics the clients send (``train-loss`` …)
are aggregated as usual and are *not*. Amplification also needs the cohort to stay secret
from the adversary: the server's own records (its log, the audit log, per-silo metrics,
reply counts) name each round's cohort, so they must stay with the server.

Secret noise. The noise (and the sampling) generators are ``torch.Generator`` (Mersenne
Twister) whose whole state (19 968 bits) comes from ``os.urandom``
(:func:`~strategies.privacy.randomness.secret_generator`; torch keeps only 32 bits of a
``manual_seed``, so a seeded generator would be a 2³² search); the state lives
only in the strategy and therefore in the server's checkpoint, so a resumed run continues
the same streams. A generator seeded from the run's public ``seed`` lets anyone holding the
config regenerate and subtract the noise; the app only does that under the research key
``dp.reproducible-noise`` and then marks the run ``dp-private = false``.

Not with robust aggregation: FedMedian, FedTrimmedAvg, Krum, Multi-Krum, Bulyan (and
:mod:`strategies.robust`) select or order *individual* updates. Their output is a
data-dependent choice among single clients' updates, so one client can move it by more than
C/m (e.g. by becoming the median or the Krum winner), and noise calibrated to the mean's
sensitivity no longer gives the reported ε; applied after noising, they would only see one
aggregate. :class:`DPFedAvg` therefore refuses them.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any, NamedTuple

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Strategy,
)
from flwr.supercore import log
from flwr.supercore.differential_privacy import compute_adaptive_noise_params

from strategies.flatten import Layout, flatten, stack, unflatten
from strategies.privacy.accountant import (
    FederatedAccountant,
    Mechanism,
    PrivacyBudget,
    check_delta,
    check_noise_multiplier,
    check_sample_rate,
)
from strategies.privacy.randomness import secret_generator
from strategies.wrappers import StrategyWrapper

__all__ = [
    "AdaptiveClipping",
    "ClipNormUpdate",
    "DPFedAvg",
    "adaptive_clip_update",
    "clip_updates",
    "dp_fedavg_aggregate",
    "gaussian_noise_sum",
    "poisson_cohort",
    "unclipped_fraction",
]

#: Metric keys DPFedAvg adds to each round's aggregated train MetricRecord.
EPSILON_KEY = "epsilon"
#: With secret Poisson sampling: ε of the same rounds without amplification, the figure
#: that holds against anyone who learns the cohorts (the server's audit log names them).
UNAMPLIFIED_KEY = "epsilon-unamplified"
DELTA_KEY = "delta"
NOISE_KEY = "noise-multiplier"
CLIP_KEY = "clip-norm"
UNCLIPPED_KEY = "unclipped-fraction"


# ============================================================================ pure functions
def _check_updates(updates: object) -> torch.Tensor:
    if not isinstance(updates, torch.Tensor) or updates.dim() != 2:
        shape = tuple(updates.shape) if isinstance(updates, torch.Tensor) else type(updates)
        raise ValueError(f"updates must be a 2-D (n_clients × d) tensor; got {shape}")
    if not updates.is_floating_point():
        raise ValueError(f"updates must have a floating dtype; got {updates.dtype}")
    return updates


def _check_positive(value: object, name: str, hint: str = "") -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}.{hint}")
    return float(value)


def _check_denominator(expected_clients: object, n_updates: int, poisson: bool) -> float:
    if poisson:
        return _check_positive(
            expected_clients, "expected_clients", " With Poisson sampling it is q·N."
        )
    if isinstance(expected_clients, bool) or not isinstance(expected_clients, int):
        raise ValueError(f"expected_clients must be an integer ≥ 1; got {expected_clients!r}")
    if expected_clients < max(1, n_updates):
        raise ValueError(
            f"expected_clients = {expected_clients} must be ≥ 1 and ≥ the number of updates "
            f"({n_updates}): it is the number of clients sampled for the round"
        )
    return float(expected_clients)


def poisson_cohort(
    num_candidates: int, sample_rate: float, generator: torch.Generator
) -> torch.Tensor:
    """Indices (into ``range(num_candidates)``) of a Poisson sample: each candidate is taken
    independently with probability ``sample_rate``; the size varies and may be 0.

    ``generator`` must be secret (:func:`secret_generator`) for amplification by sampling
    to hold: whoever knows the cohort knows whether a client took part.
    """
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int):
        raise ValueError(f"num_candidates must be an integer ≥ 0; got {num_candidates!r}")
    if num_candidates < 0:
        raise ValueError(f"num_candidates must be ≥ 0; got {num_candidates}")
    rate = _check_positive(sample_rate, "sample_rate")
    if rate > 1:
        raise ValueError(f"sample_rate must be in (0, 1]; got {sample_rate!r}")
    draws = torch.rand(num_candidates, generator=generator, dtype=torch.float64)
    return torch.nonzero(draws < rate).flatten()


def clip_updates(updates: torch.Tensor, clip_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each row of ``updates`` (n × d) to L2 norm ≤ ``clip_norm``.

    Returns ``(clipped, norms)`` with ``norms`` the rows' norms *before* clipping (float64).
    A row with a NaN/inf entry cannot be clipped: it becomes zeros (a contribution of norm
    0, harmless for the sensitivity bound) and its norm is reported as ``inf``.
    """
    updates = _check_updates(updates)
    clip_norm = _check_positive(clip_norm, "clip_norm", " Use e.g. the median update norm.")
    finite = torch.isfinite(updates).all(dim=1)
    safe = torch.where(finite[:, None], updates, torch.zeros((), dtype=updates.dtype))
    norms = torch.linalg.vector_norm(safe.double(), dim=1)
    scale = torch.clamp(clip_norm / norms.clamp_min(torch.finfo(torch.float64).tiny), max=1.0)
    clipped = (safe.double() * scale[:, None]).to(updates.dtype)
    norms = torch.where(finite, norms, torch.full_like(norms, math.inf))
    return clipped, norms


def gaussian_noise_sum(
    clipped: torch.Tensor,
    noise_multiplier: float,
    clip_norm: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``clipped.sum(0) + N(0, (noise_multiplier · clip_norm)² I)`` — the Gaussian mechanism
    on the sum of updates of L2 norm ≤ ``clip_norm`` (sensitivity ``clip_norm``)."""
    clipped = _check_updates(clipped)
    sigma = check_noise_multiplier(noise_multiplier)
    clip_norm = _check_positive(clip_norm, "clip_norm")
    total = clipped.sum(dim=0)
    if sigma == 0:
        return total
    noise = torch.randn(total.shape, generator=generator, dtype=torch.float64, device=total.device)
    return (total.double() + noise * (sigma * clip_norm)).to(total.dtype)


def dp_fedavg_aggregate(
    updates: torch.Tensor,
    clip_norm: float,
    noise_multiplier: float,
    expected_clients: float,
    generator: torch.Generator | None = None,
    *,
    poisson: bool = False,
) -> torch.Tensor:
    """DP-FedAvg's noised mean update: ``(Σ clip(Δᵢ, C) + N(0, (σC)²)) / m``.

    ``m = expected_clients`` is fixed and public, never the number of replies, so one
    client changes the result by at most C/m, the sensitivity the noise σC/m is calibrated
    to. With fixed-size sampling it is the number of clients the round *sampled* (an
    integer ≥ the number of updates; replies that failed simply contribute nothing). With
    Poisson sampling (``poisson=True``) it is q·N, the expected cohort: the actual cohort
    varies and may be empty (``updates`` of shape ``(0, d)``: the result is noise only).
    """
    updates = _check_updates(updates)
    denominator = _check_denominator(expected_clients, updates.shape[0], poisson)
    clipped, _ = clip_updates(updates, clip_norm)
    return gaussian_noise_sum(clipped, noise_multiplier, clip_norm, generator) / denominator


def unclipped_fraction(norms: torch.Tensor, clip_norm: float, expected_clients: float) -> float:
    """Fixed-denominator estimate of the fraction of sampled clients whose update was not
    clipped: ``1/2 + Σᵢ (bᵢ − 1/2) / m`` with ``bᵢ = [‖Δᵢ‖ ≤ C]``.

    Centring the bits at 1/2 gives the sum a sensitivity of 1/2 (Andrew et al. 2021, as in
    TensorFlow Privacy's quantile estimator), which the ``(2σ_b)⁻²`` term of the noise split
    assumes. Equals ``count / m`` when all m clients replied. ``m`` is the round's fixed
    denominator (q·N under Poisson sampling).
    """
    expected_clients = _check_positive(expected_clients, "expected_clients")
    bits = (norms <= clip_norm).double()
    return 0.5 + float((bits - 0.5).sum()) / expected_clients


class ClipNormUpdate(NamedTuple):
    """Result of :func:`adaptive_clip_update`."""

    clip_norm: float
    """The clipping norm for the next round."""
    noisy_unclipped_fraction: float
    """The privatised unclipped fraction b̄ the update used (safe to report)."""


def adaptive_clip_update(
    clip_norm: float,
    unclipped_fraction: float,
    target_quantile: float,
    lr: float,
    noise_std_for_count: float,
    generator: torch.Generator | None = None,
    *,
    expected_clients: float,
) -> ClipNormUpdate:
    """Andrew et al. (2021)'s geometric clipping-norm update ``C ← C · exp(−η (b̄ − γ))``.

    ``b̄ = unclipped_fraction + N(0, σ_b²) / m`` privatises the fraction of clients whose
    update norm was ≤ C (use :func:`unclipped_fraction`), ``γ = target_quantile`` is the
    fraction that should stay unclipped (0.5 = track the median norm), ``η = lr`` (0.2 in
    the paper), ``σ_b = noise_std_for_count`` (the paper suggests m/20) and
    ``m = expected_clients`` (the round's fixed denominator). More unclipped than targeted
    → C shrinks, fewer → C grows.
    """
    _check_positive(clip_norm, "clip_norm")
    if not 0 <= target_quantile <= 1:
        raise ValueError(f"target_quantile must be in [0, 1]; got {target_quantile!r}")
    _check_positive(lr, "lr", " The paper uses 0.2.")
    noise_std = check_noise_multiplier(noise_std_for_count, "noise_std_for_count")
    expected_clients = _check_positive(expected_clients, "expected_clients")
    noise = 0.0
    if noise_std > 0:
        noise = float(torch.randn((), generator=generator, dtype=torch.float64)) * noise_std
    noisy = float(unclipped_fraction) + noise / expected_clients
    return ClipNormUpdate(clip_norm * math.exp(-lr * (noisy - target_quantile)), noisy)


# ============================================================================ the strategy
@dataclass(frozen=True)
class AdaptiveClipping:
    """Adaptive clipping settings (Andrew et al. 2021).

    ``target_quantile`` γ: fraction of updates to leave unclipped; ``learning_rate`` η of
    the geometric update; ``count_noise_std`` σ_b of the noise on the unclipped count
    (``None`` = m/20, the paper's and Flower's default). The round's noise multiplier σ
    stays the *accounted* one: the update noise becomes σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2)
    (Flower's ``compute_adaptive_noise_params``), which needs 2σ_b > σ.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.target_quantile <= 1:
            raise ValueError(f"target_quantile must be in [0, 1]; got {self.target_quantile!r}")
        _check_positive(self.learning_rate, "learning_rate", " The paper uses 0.2.")
        if self.count_noise_std is not None:
            check_noise_multiplier(self.count_noise_std, "count_noise_std")


#: Flower strategies whose aggregation is an (example-)weighted mean of the replies, which
#: DPFedAvg replaces by its clipped, noised, uniform mean (FedOpt/FedAvgM then apply their
#: server optimiser to it). Matched on the class's ``aggregate_train``, so a subclass that
#: overrides the aggregation (e.g. robust aggregation) is refused.
_MEAN_STRATEGIES = (FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, FedAvgM)
_MEAN_AGGREGATIONS = frozenset(cls.aggregate_train for cls in _MEAN_STRATEGIES)


def _check_wrappable(strategy: object) -> FedAvg:
    name = type(strategy).__name__
    if isinstance(strategy, FedAvg) and type(strategy).aggregate_train in _MEAN_AGGREGATIONS:
        return strategy
    if isinstance(strategy, Strategy) and hasattr(strategy, "inner"):
        raise ValueError(
            f"DPFedAvg must wrap the aggregation strategy itself, not the wrapper {name}: "
            "build DPFedAvg(strategy) first and put SeededSampling / RoundReporter around it"
        )
    allowed = ", ".join(cls.__name__ for cls in _MEAN_STRATEGIES)
    raise ValueError(
        f"DPFedAvg cannot wrap {name}: differential privacy needs the aggregate of clipped "
        "updates to move by at most C/m when one client changes, but median, trimmed-mean, "
        "Krum, Multi-Krum, Bulyan and other robust rules select or order individual updates, "
        "so one client can change their output by more than that (and noise added after them "
        "would not match). Wrap a mean-based strategy instead: "
        f"{allowed}."
    )


@dataclass
class _RoundPlan:
    expected_clients: float  # the fixed denominator m (q·N under Poisson sampling)
    sample_rate: float


class DPFedAvg(StrategyWrapper):
    """Central DP-FedAvg around a mean-based Flower strategy, with a privacy accountant.

    Parameters
    ----------
    strategy : FedAvg
        FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad or FedAvgM: it samples the clients
        (unless ``sampling_amplification``), and its server update is applied to the
        noised mean delta. Anything else (robust aggregation) raises ``ValueError``.
    noise_multiplier : float
        σ, the accounted noise multiplier (noise std / clipping norm on the sum), ≥ 0.
    clip_norm : float
        C, the L2 bound on each client's delta (the initial value with adaptive clipping).
    delta : float, optional
        δ at which ε is reported; defaults to ``budget.target_delta``.
    generator : torch.Generator, optional
        Source of the Gaussian noise (update and, with adaptive clipping, count noise).
        ``None`` (the default, and the only private choice) = a generator whose whole
        state is drawn from ``os.urandom``
        (:func:`~strategies.privacy.randomness.secret_generator`). A generator seeded from
        anything public makes the noise subtractable: for research reruns only.
    mechanism : {"rdp", "prv"}
        Accountant used when ``accountant`` is not given.
    accountant : FederatedAccountant, optional
        An accountant to continue (e.g. restored from a checkpoint with
        ``load_state_dict``).
    budget : PrivacyBudget, optional
        When given, ``configure_train`` sends no messages once the next round would bring
        ε above ``budget.target_epsilon`` ("stop" mode; with a calibrated σ it never
        triggers on a run of the planned length).
    adaptive : AdaptiveClipping, optional
        Adapt C every round towards a quantile of the update norms.
    trained_keys : collection of str, optional
        Names of the arrays clients train (e.g. the model's ``named_parameters()``). Other
        arrays (buffers such as input-scaling moments) keep the global value and get no
        noise. ``None`` = every floating-point array.
    sampling_amplification : bool
        ``False`` (default): the wrapped strategy samples (fixed size, possibly from a
        public seed) and every round is accounted at sample rate 1, exact for any
        sampling. ``True``: secret Poisson sampling — each round DPFedAvg keeps every
        connected client independently with probability ``sample_rate`` (drawn from
        ``sampling_generator``), divides the noised sum by ``sample_rate × num_clients``
        and accounts the round at ``sample_rate``; an empty cohort still releases the
        noise. The wrapped strategy must then address every client
        (``fraction_train=1.0``), and the cohort must stay secret (see module doc).
    sample_rate : float, optional
        q in (0, 1], with ``sampling_amplification`` (required then).
    num_clients : int, optional
        N, the size of the population sampled from, with ``sampling_amplification``
        (required then): the denominator is q·N whoever is connected.
    sampling_generator : torch.Generator, optional
        Source of the Poisson draws; ``None`` = :func:`secret_generator`.

    After each round the aggregated train MetricRecord carries ``epsilon`` (cumulative, at
    δ), ``delta``, ``noise-multiplier`` (σ), ``clip-norm`` (C used this round) and, with
    adaptive clipping, ``unclipped-fraction`` (privatised).
    """

    def __init__(
        self,
        strategy: FedAvg,
        *,
        noise_multiplier: float,
        clip_norm: float,
        delta: float | None = None,
        generator: torch.Generator | None = None,
        mechanism: Mechanism = "rdp",
        accountant: FederatedAccountant | None = None,
        budget: PrivacyBudget | None = None,
        adaptive: AdaptiveClipping | None = None,
        trained_keys: Collection[str] | None = None,
        sampling_amplification: bool = False,
        sample_rate: float | None = None,
        num_clients: int | None = None,
        sampling_generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(_check_wrappable(strategy))
        self.noise_multiplier = check_noise_multiplier(noise_multiplier)
        self.clip_norm = _check_positive(
            clip_norm, "clip_norm", " It bounds each client's update norm; e.g. 0.1–10."
        )
        if delta is None:
            if budget is None:
                raise ValueError("DPFedAvg needs delta (δ for reporting ε) or a budget")
            delta = budget.target_delta
        elif budget is not None and delta != budget.target_delta:
            raise ValueError(
                f"delta = {delta} differs from budget.target_delta = {budget.target_delta}; "
                "pass only the budget, or the same δ"
            )
        self.delta = check_delta(delta, name="delta")
        if budget is not None and self.noise_multiplier == 0:
            raise ValueError("a privacy budget needs noise_multiplier > 0 (σ = 0 gives ε = ∞)")
        self.budget = budget
        self.accountant = accountant or FederatedAccountant(mechanism, self.noise_multiplier, 1.0)
        self.adaptive = adaptive
        if adaptive is not None and adaptive.count_noise_std is not None:
            self._noise_split(1)  # validate 2σ_b > σ now
        self.trained_keys = None if trained_keys is None else frozenset(trained_keys)
        self.sampling_amplification = bool(sampling_amplification)
        if num_clients is not None and (
            isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1
        ):
            raise ValueError(f"num_clients must be an integer ≥ 1; got {num_clients!r}")
        self.num_clients = num_clients
        self.sample_rate = None if sample_rate is None else check_sample_rate(sample_rate)
        if self.sampling_amplification:
            self._check_poisson(strategy)
        elif self.sample_rate is not None:
            raise ValueError(
                "sample_rate is the probability of secret Poisson sampling and needs "
                "sampling_amplification=True; without it every round is accounted at rate 1"
            )
        # Both streams come from OS entropy unless the caller passes its own; they are
        # torch.Generator attributes, so the server checkpoint saves and restores them.
        self.generator = generator if generator is not None else secret_generator()
        self.sampling_generator = (
            sampling_generator if sampling_generator is not None else secret_generator()
        )
        self._plans: dict[int, _RoundPlan] = {}

    def __repr__(self) -> str:
        return f"DPFedAvg({self.inner!r})"

    # -- helpers
    def _check_poisson(self, strategy: FedAvg) -> None:
        if self.sample_rate is None or self.num_clients is None:
            raise ValueError(
                "sampling_amplification=True (secret Poisson sampling) needs sample_rate q "
                "and num_clients N: each client is taken with probability q and the noised "
                "sum is divided by q·N; pass both, e.g. sample_rate=0.1, num_clients=100"
            )
        if strategy.fraction_train != 1.0:
            raise ValueError(
                f"sampling_amplification=True: DPFedAvg draws the cohort itself, so the "
                f"wrapped {type(strategy).__name__} must address every client; build it "
                f"with fraction_train=1.0 (got {strategy.fraction_train}) and pass the "
                "sampling probability as sample_rate"
            )

    @property
    def releases_empty_rounds(self) -> bool:
        """Whether a round without any usable reply still releases (noise only) and is
        accounted: true under Poisson sampling, where withholding the release would tell
        that the cohort was empty. Wrappers that skip reply-less rounds consult it."""
        return self.sampling_amplification

    def _noise_split(self, expected_clients: float) -> tuple[float, float]:
        """``(update noise multiplier σ_Δ, count noise std σ_b)`` for a round."""
        if self.adaptive is None:
            return self.noise_multiplier, 0.0
        try:
            count_std, update_sigma = compute_adaptive_noise_params(
                self.noise_multiplier, expected_clients, self.adaptive.count_noise_std
            )
        except ValueError as exc:
            raise ValueError(
                f"adaptive clipping with noise_multiplier={self.noise_multiplier} needs a "
                f"count noise std σ_b > noise_multiplier/2 = {self.noise_multiplier / 2:g} "
                f"(got {self.adaptive.count_noise_std or expected_clients / 20:g}); raise "
                "AdaptiveClipping.count_noise_std, sample more clients or lower "
                f"noise_multiplier. Flower: {exc}"
            ) from None
        return float(update_sigma), float(count_std)

    def _private_keys(self, record: ArrayRecord) -> list[str]:
        keys = []
        for key, arr in record.items():
            if not np.issubdtype(np.dtype(arr.dtype), np.floating):
                continue
            if self.trained_keys is None or key in self.trained_keys:
                keys.append(key)
        return keys

    def privacy_spent(self) -> float:
        """Cumulative ε at ``delta``."""
        return self.accountant.epsilon(self.delta)

    # -- Strategy API
    def summary(self) -> None:
        """Log the DP settings, then the wrapped strategy's."""
        log(INFO, "\t├──> Central DP (DP-FedAvg):")
        log(INFO, "\t│\t├── Noise multiplier σ: %s", self.noise_multiplier)
        log(
            INFO,
            "\t│\t├── Clipping norm C: %s%s",
            self.clip_norm,
            " (adaptive)" if self.adaptive else "",
        )
        if self.sampling_amplification:
            log(
                INFO,
                "\t│\t├── Secret Poisson sampling: q = %g of N = %d (denominator %g)",
                self.sample_rate,
                self.num_clients,
                self._denominator(),
            )
        log(INFO, "\t│\t├── Accountant: %s, δ = %g", self.accountant.mechanism, self.delta)
        if self.budget is not None:
            log(INFO, "\t│\t└── Budget: ε ≤ %g", self.budget.target_epsilon)
        self.inner.summary()

    def _denominator(self) -> float:
        """q·N, the fixed denominator of Poisson sampling."""
        return float(self.sample_rate) * float(self.num_clients)

    def _poisson_sample(self, messages: list[Message], grid: Grid) -> list[Message]:
        """Keep each client's message independently with probability q (secret draws, one
        per connected node in the grid's order, so a seeded generator is reproducible)."""
        by_node = {msg.metadata.dst_node_id: msg for msg in messages}
        candidates = [node for node in grid.get_node_ids() if node in by_node]
        chosen = poisson_cohort(len(candidates), self.sample_rate, self.sampling_generator)
        return [by_node[candidates[i]] for i in chosen.tolist()]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients (through the wrapped strategy, or by secret Poisson sampling),
        unless the budget is spent."""
        if self.trained_keys is not None and not self.trained_keys <= set(arrays.keys()):
            missing = sorted(self.trained_keys - set(arrays.keys()))
            raise ValueError(
                f"trained_keys {missing} are not arrays of the global model; pass names from "
                "model.named_parameters() of the task's model"
            )
        self.begin_round(server_round, "train", arrays)
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._plans.pop(server_round, None)
        if not messages:
            return []
        if self.sampling_amplification:
            expected, rate = self._denominator(), float(self.sample_rate)
        else:
            expected, rate = len(messages), 1.0
        self._noise_split(expected)  # fail before sending anything if σ_b is too small
        if self.budget is not None:
            after = self.budget.epsilon_after(
                self.accountant, noise_multiplier=self.noise_multiplier, sample_rate=rate
            )
            if after > self.budget.target_epsilon:
                log(
                    WARNING,
                    "DP budget: round %d would bring ε from %.4f to %.4f > target %g "
                    "(δ = %g); no training messages sent, the global model stays as it is.",
                    server_round,
                    self.budget.spent(self.accountant),
                    after,
                    self.budget.target_epsilon,
                    self.delta,
                )
                return []
        if self.sampling_amplification:
            # After the budget check: a round that is not run draws nothing.
            messages = self._poisson_sample(messages, grid)
        self._plans[server_round] = _RoundPlan(expected, rate)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip the replies' deltas, noise their sum, divide by the fixed denominator,
        apply the wrapped strategy's server update and step the accountant."""
        replies = list(replies)
        plan = self._plans.pop(server_round, None)
        if plan is None:
            # No training was configured (budget spent): nothing released, no ε spent.
            return None, None
        valid, _ = self.inner._check_and_log_replies(replies, is_train=True)
        current = self.round.arrays  # the global model this round's replies are updates of
        global_layout = Layout.of(current)
        records = []
        for msg in valid:
            record = next(iter(msg.content.array_records.values()))
            layout = Layout.of(record)
            if (layout.keys, layout.shapes) != (global_layout.keys, global_layout.shapes):
                log(
                    WARNING,
                    "DP-FedAvg: reply from node %d does not match the global "
                    "model's arrays; ignored (it counts as a non-reply)",
                    msg.metadata.src_node_id,
                )
                continue
            records.append((msg, record))
        if not records and not self.releases_empty_rounds:
            log(
                WARNING,
                "DP-FedAvg round %d: no usable replies; model unchanged, no ε spent",
                server_round,
            )
            return None, None

        keys = self._private_keys(current)
        update_sigma, count_std = self._noise_split(plan.expected_clients)
        clip_norm = self.clip_norm
        new_arrays = current
        norms = torch.zeros(0, dtype=torch.float64)
        if keys:
            sub = Layout.of(ArrayRecord({k: current[k] for k in keys}))
            reference = flatten(ArrayRecord({k: current[k] for k in keys}), sub)
            if records:
                deltas, _ = stack([ArrayRecord({k: r[k] for k in keys}) for _, r in records], sub)
                deltas -= reference
            else:  # an empty Poisson cohort: the release is the noise alone
                deltas = reference.new_zeros((0, reference.numel()))
            norms = torch.linalg.vector_norm(deltas.double(), dim=1)
            mean_delta = dp_fedavg_aggregate(
                deltas,
                clip_norm,
                update_sigma,
                plan.expected_clients,
                self.generator,
                poisson=self.sampling_amplification,
            )
            noised = unflatten(reference + mean_delta, sub)
            new_arrays = ArrayRecord(
                {k: (noised[k] if k in noised else current[k]) for k in current}
            )

        metrics = (
            self.inner.train_metrics_aggr_fn(
                [msg.content for msg, _ in records], self.inner.weighted_by_key
            )
            if records
            else MetricRecord()
        )
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=plan.sample_rate)
        epsilon = self.accountant.epsilon(self.delta)
        metrics[EPSILON_KEY] = epsilon
        if self.sampling_amplification:
            metrics[UNAMPLIFIED_KEY] = self.accountant.epsilon_without_sampling(self.delta)
        metrics[DELTA_KEY] = self.delta
        metrics[NOISE_KEY] = self.noise_multiplier
        metrics[CLIP_KEY] = clip_norm
        if self.adaptive is not None:
            step = adaptive_clip_update(
                clip_norm,
                unclipped_fraction(norms, clip_norm, plan.expected_clients),
                self.adaptive.target_quantile,
                self.adaptive.learning_rate,
                count_std,
                self.generator,
                expected_clients=plan.expected_clients,
            )
            self.clip_norm = step.clip_norm
            metrics[UNCLIPPED_KEY] = step.noisy_unclipped_fraction
        log(
            INFO,
            "DP-FedAvg round %d: %d replies / %g, C = %.4g, σ = %.4g, ε = %.4f (δ = %g)",
            server_round,
            len(records),
            plan.expected_clients,
            clip_norm,
            self.noise_multiplier,
            epsilon,
            self.delta,
        )

        server_arrays = self._server_update(server_round, new_arrays)
        return server_arrays, metrics

    def _server_update(self, server_round: int, noised: ArrayRecord) -> ArrayRecord | None:
        """Let the wrapped strategy turn ``current + noised mean delta`` into the new global
        model (identity for FedAvg/FedProx; server optimiser for FedOpt/FedAvgM)."""
        strategy = self.inner
        if type(strategy).aggregate_train in (FedAvg.aggregate_train, FedProx.aggregate_train):
            return noised
        content = RecordDict(
            {
                strategy.arrayrecord_key: noised,
                "metrics": MetricRecord({strategy.weighted_by_key: 1}),
            }
        )
        synthetic = Message(content, dst_node_id=0, message_type=MessageType.TRAIN)
        arrays, _ = strategy.aggregate_train(server_round, [synthetic])
        return arrays

    # configure_evaluate / aggregate_evaluate: the wrapped strategy's (StrategyWrapper);
    # evaluation metrics are not privatised.

    # -- checkpointing
    def own_state(self) -> dict[str, Any]:
        """Accountant history, current clipping norm and the noise and sampling
        generators' states (the secret: it lives in the server checkpoint only)."""
        return {
            **self.accountant.state_dict(),
            "clip-norm": self.clip_norm,
            "generator": self.generator.get_state(),
            "sampling_generator": self.sampling_generator.get_state(),
        }

    def load_own_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`own_state` (e.g. when resuming a run)."""
        self.accountant.load_state_dict(state)
        self.clip_norm = _check_positive(state.get("clip-norm", self.clip_norm), "clip-norm")
        for name in ("generator", "sampling_generator"):
            if name in state:
                getattr(self, name).set_state(state[name])
