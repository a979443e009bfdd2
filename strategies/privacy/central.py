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
4. divides by the *expected* number of clients m — a fixed, public denominator
   (:func:`dp_fedavg_aggregate`). Dividing by the number of replies instead would make the
   denominator depend on who took part, and example-count weights would make one client's
   influence depend on its (unbounded) data size: both break the sensitivity C/m the noise
   is calibrated to. Every client therefore counts once, whatever its ``num-examples``.
5. adds the noised mean delta to the global model (through the wrapped strategy, so a server
   optimiser such as FedAdam acts on it: post-processing keeps the guarantee),
6. steps its :class:`~strategies.privacy.accountant.FederatedAccountant` once with
   ``sample_rate = sampled clients / connected clients`` and reports the cumulative ε.

Privacy unit and caveats: a *client* (silo) and all its data (add/remove one client). The
accountants assume Poisson sampling of clients; Flower samples a fixed number without
replacement, for which ``m/N`` Poisson accounting is the usual approximation (McMahan et al.
2018). Amplification by sampling also assumes the sample is secret: when the sampling seed
is public (a seeded run), pass ``sampling_amplification=False`` to account every round at
sample rate 1 (no amplification; exact for any sampling). Training metrics the clients send
(``train-loss`` …) are aggregated as usual and are *not* protected. The noise comes from a
``torch.Generator`` (Mersenne Twister), fine for research and seeded reproducibility, not a
cryptographically secure source.

Not with robust aggregation: FedMedian, FedTrimmedAvg, Krum, Multi-Krum, Bulyan (and
:mod:`strategies.robust`) select or order *individual* updates. Their output is a
data-dependent choice among single clients' updates, so one client can move it by more than
C/m (e.g. by becoming the median or the Krum winner), and noise calibrated to the mean's
sensitivity no longer gives the reported ε; applied after noising, they would only see one
aggregate. :class:`DPFedAvg` therefore refuses them.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import NamedTuple

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
)
from strategies.wrappers import StrategyWrapper

__all__ = [
    "AdaptiveClipping",
    "ClipNormUpdate",
    "DPFedAvg",
    "adaptive_clip_update",
    "clip_updates",
    "dp_fedavg_aggregate",
    "gaussian_noise_sum",
    "unclipped_fraction",
]

#: Metric keys DPFedAvg adds to each round's aggregated train MetricRecord.
EPSILON_KEY = "epsilon"
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
    expected_clients: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DP-FedAvg's noised mean update: ``(Σ clip(Δᵢ, C) + N(0, (σC)²)) / m``.

    ``m = expected_clients`` is the fixed number of clients the round *sampled* (public,
    chosen before any client answered), not the number of replies: with a fixed denominator
    one client changes the result by at most C/m, the sensitivity the noise σC/m is
    calibrated to. Replies that failed simply contribute nothing.
    """
    updates = _check_updates(updates)
    if isinstance(expected_clients, bool) or not isinstance(expected_clients, int):
        raise ValueError(f"expected_clients must be an integer ≥ 1; got {expected_clients!r}")
    if expected_clients < max(1, updates.shape[0]):
        raise ValueError(
            f"expected_clients = {expected_clients} must be ≥ 1 and ≥ the number of updates "
            f"({updates.shape[0]}): it is the number of clients sampled for the round"
        )
    clipped, _ = clip_updates(updates, clip_norm)
    return gaussian_noise_sum(clipped, noise_multiplier, clip_norm, generator) / expected_clients


def unclipped_fraction(norms: torch.Tensor, clip_norm: float, expected_clients: int) -> float:
    """Fixed-denominator estimate of the fraction of sampled clients whose update was not
    clipped: ``1/2 + Σᵢ (bᵢ − 1/2) / m`` with ``bᵢ = [‖Δᵢ‖ ≤ C]``.

    Centring the bits at 1/2 gives the sum a sensitivity of 1/2 (Andrew et al. 2021, as in
    TensorFlow Privacy's quantile estimator), which the ``(2σ_b)⁻²`` term of the noise split
    assumes. Equals ``count / m`` when all m clients replied.
    """
    if isinstance(expected_clients, bool) or not isinstance(expected_clients, int):
        raise ValueError(f"expected_clients must be an integer ≥ 1; got {expected_clients!r}")
    if expected_clients < 1:
        raise ValueError(f"expected_clients must be ≥ 1; got {expected_clients}")
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
    expected_clients: int,
) -> ClipNormUpdate:
    """Andrew et al. (2021)'s geometric clipping-norm update ``C ← C · exp(−η (b̄ − γ))``.

    ``b̄ = unclipped_fraction + N(0, σ_b²) / m`` privatises the fraction of clients whose
    update norm was ≤ C (use :func:`unclipped_fraction`), ``γ = target_quantile`` is the
    fraction that should stay unclipped (0.5 = track the median norm), ``η = lr`` (0.2 in
    the paper), ``σ_b = noise_std_for_count`` (the paper suggests m/20) and
    ``m = expected_clients``. More unclipped than targeted → C shrinks, fewer → C grows.
    """
    _check_positive(clip_norm, "clip_norm")
    if not 0 <= target_quantile <= 1:
        raise ValueError(f"target_quantile must be in [0, 1]; got {target_quantile!r}")
    _check_positive(lr, "lr", " The paper uses 0.2.")
    noise_std = check_noise_multiplier(noise_std_for_count, "noise_std_for_count")
    if isinstance(expected_clients, bool) or not isinstance(expected_clients, int):
        raise ValueError(f"expected_clients must be an integer ≥ 1; got {expected_clients!r}")
    if expected_clients < 1:
        raise ValueError(f"expected_clients must be ≥ 1; got {expected_clients}")
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
    arrays: ArrayRecord
    expected_clients: int
    sample_rate: float


class DPFedAvg(StrategyWrapper):
    """Central DP-FedAvg around a mean-based Flower strategy, with a privacy accountant.

    Parameters
    ----------
    strategy : FedAvg
        FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad or FedAvgM: it samples the clients,
        and its server update is applied to the noised mean delta. Anything else (robust
        aggregation) raises ``ValueError``.
    noise_multiplier : float
        σ, the accounted noise multiplier (noise std / clipping norm on the sum), ≥ 0.
    clip_norm : float
        C, the L2 bound on each client's delta (the initial value with adaptive clipping).
    delta : float, optional
        δ at which ε is reported; defaults to ``budget.target_delta``.
    generator : torch.Generator, optional
        Source of the Gaussian noise; pass a seeded one for reproducible runs. ``None``
        seeds a fresh generator from the OS (never torch's constant default seed).
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
        Account each round at ``sampled / connected`` clients (``True``) or at 1 (no
        amplification by sampling; use it when the sampling seed is public).
    num_clients : int, optional
        Total clients N for the sample rate; ``None`` = nodes connected to the grid at
        ``configure_train``.

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
        sampling_amplification: bool = True,
        num_clients: int | None = None,
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
        if num_clients is not None and (isinstance(num_clients, bool) or num_clients < 1):
            raise ValueError(f"num_clients must be an integer ≥ 1; got {num_clients!r}")
        self.num_clients = num_clients
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        self.generator = generator
        self._plans: dict[int, _RoundPlan] = {}

    def __repr__(self) -> str:
        return f"DPFedAvg({self.inner!r})"

    # -- helpers
    def _noise_split(self, expected_clients: int) -> tuple[float, float]:
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
        log(INFO, "\t│\t├── Accountant: %s, δ = %g", self.accountant.mechanism, self.delta)
        if self.budget is not None:
            log(INFO, "\t│\t└── Budget: ε ≤ %g", self.budget.target_epsilon)
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients through the wrapped strategy, unless the budget is spent."""
        if self.trained_keys is not None and not self.trained_keys <= set(arrays.keys()):
            missing = sorted(self.trained_keys - set(arrays.keys()))
            raise ValueError(
                f"trained_keys {missing} are not arrays of the global model; pass names from "
                "model.named_parameters() of the task's model"
            )
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._plans.pop(server_round, None)
        if not messages:
            return []
        expected = len(messages)
        total = self.num_clients or len(list(grid.get_node_ids()))
        rate = min(1.0, expected / max(total, 1)) if self.sampling_amplification else 1.0
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
        self._plans[server_round] = _RoundPlan(arrays, expected, rate)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip the replies' deltas, noise their sum, average over the sampled clients,
        apply the wrapped strategy's server update and step the accountant."""
        replies = list(replies)
        plan = self._plans.pop(server_round, None)
        if plan is None:
            # No training was configured (budget spent): nothing released, no ε spent.
            return None, None
        valid, _ = self.inner._check_and_log_replies(replies, is_train=True)
        global_layout = Layout.of(plan.arrays)
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
        if not records:
            log(
                WARNING,
                "DP-FedAvg round %d: no usable replies; model unchanged, no ε spent",
                server_round,
            )
            return None, None

        keys = self._private_keys(plan.arrays)
        current = plan.arrays
        update_sigma, count_std = self._noise_split(plan.expected_clients)
        clip_norm = self.clip_norm
        new_arrays = current
        norms = torch.zeros(0, dtype=torch.float64)
        if keys:
            sub = Layout.of(ArrayRecord({k: current[k] for k in keys}))
            deltas, _ = stack([ArrayRecord({k: r[k] for k in keys}) for _, r in records], sub)
            reference = flatten(ArrayRecord({k: current[k] for k in keys}), sub)
            deltas -= reference
            norms = torch.linalg.vector_norm(deltas.double(), dim=1)
            mean_delta = dp_fedavg_aggregate(
                deltas, clip_norm, update_sigma, plan.expected_clients, self.generator
            )
            noised = unflatten(reference + mean_delta, sub)
            new_arrays = ArrayRecord(
                {k: (noised[k] if k in noised else current[k]) for k in current}
            )

        metrics = self.inner.train_metrics_aggr_fn(
            [msg.content for msg, _ in records], self.inner.weighted_by_key
        )
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=plan.sample_rate)
        epsilon = self.accountant.epsilon(self.delta)
        metrics[EPSILON_KEY] = epsilon
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
            "DP-FedAvg round %d: %d/%d clients, C = %.4g, σ = %.4g, ε = %.4f (δ = %g)",
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
    def state_dict(self) -> dict[str, float | list[float] | list[int]]:
        """Accountant history and current clipping norm (ConfigRecord-friendly)."""
        return {**self.accountant.state_dict(), "clip-norm": self.clip_norm}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (e.g. when resuming a run)."""
        self.accountant.load_state_dict(state)
        self.clip_norm = _check_positive(state.get("clip-norm", self.clip_norm), "clip-norm")
