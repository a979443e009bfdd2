"""Differential privacy for federated runs.

* :mod:`.accountant` — :class:`FederatedAccountant` (Opacus' RDP / PRV accountants behind a
  small ``step()`` / ``epsilon(delta)`` object with a serialisable history),
  :func:`calibrate_noise_multiplier` and :class:`PrivacyBudget`.
* :mod:`.central` — client-level DP-FedAvg: pure tensor functions (clipping, Gaussian noise,
  the fixed-denominator noised mean, adaptive clipping, secret Poisson sampling) and the
  :class:`DPFedAvg` strategy wrapper that reports ε every round.
* :mod:`.local` — record-level DP-SGD inside a silo with Opacus
  (:func:`make_private_trainer`), with an accountant state that survives between rounds.
"""

from strategies.privacy.accountant import (
    MECHANISMS,
    FederatedAccountant,
    PrivacyBudget,
    calibrate_noise_multiplier,
)
from strategies.privacy.central import (
    AdaptiveClipping,
    DPFedAvg,
    adaptive_clip_update,
    clip_updates,
    dp_fedavg_aggregate,
    gaussian_noise_sum,
    poisson_cohort,
    unclipped_fraction,
)
from strategies.privacy.local import LOCAL_DP_STATE_KEY, PrivateTrainer, make_private_trainer
from strategies.privacy.randomness import secret_generator

__all__ = [
    "LOCAL_DP_STATE_KEY",
    "MECHANISMS",
    "AdaptiveClipping",
    "DPFedAvg",
    "FederatedAccountant",
    "PrivacyBudget",
    "PrivateTrainer",
    "adaptive_clip_update",
    "calibrate_noise_multiplier",
    "clip_updates",
    "dp_fedavg_aggregate",
    "gaussian_noise_sum",
    "make_private_trainer",
    "poisson_cohort",
    "secret_generator",
    "unclipped_fraction",
]
