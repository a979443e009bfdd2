"""Local (record-level) differential privacy inside a silo: DP-SGD with Opacus.

Paper: Abadi et al., "Deep Learning with Differential Privacy" (CCS 2016,
https://arxiv.org/abs/1607.00133). Every optimiser step clips each training row's gradient to
L2 norm ≤ ``max_grad_norm``, sums, adds Gaussian noise N(0, (σ · max_grad_norm)²) and
averages; batches are drawn by *Poisson sampling* (each row independently with probability
q = 1 / steps-per-epoch), which Opacus' accountants assume. The silo's ε then protects each
of its rows against everyone who sees the model it sends (the server, other silos, the
final model), whatever the server does.

:func:`make_private_trainer` wires ``opacus.PrivacyEngine`` for one round of a ClientApp and
returns a :class:`PrivateTrainer`. Its accountant state is a dict of three numeric lists
(:meth:`PrivateTrainer.accountant_state`): persist it after training and pass it back next
round, so the reported ``dp-epsilon`` is cumulative over all rounds the silo trained in
(the ClientApp keeps it in the silo's state file, :mod:`fl_app.silo_state`).

Randomness: the guarantee against the server holds only if the server cannot regenerate
the noise or the Poisson batches. Without ``generator`` both come from
:func:`~strategies.privacy.randomness.secret_generator` (full MT19937 state from the OS);
the ClientApp passes the silo's own secret generators, kept across rounds. An int seed or
a seeded generator makes runs reproducible and the noise public: research only
(``dp.reproducible-noise``).

Models: Opacus needs per-sample gradients for every trainable layer. Both models of this
project pass ``opacus.validators.ModuleValidator`` unchanged: ``SmallCNN`` (Conv2d, ReLU,
MaxPool2d, AdaptiveAvgPool2d, Linear) and ``MLP`` (Linear, ReLU and ``Standardize``, which
holds only buffers, no parameters, so it needs no grad sampler). A model with BatchNorm or
another unsupported layer is refused with Opacus' list of problems; it is not "fixed"
automatically, because ``ModuleValidator.fix`` swaps layers and would change the state-dict
keys every silo and the server must share.

Not covered: FedProx's proximal term (its gradient bypasses Opacus' per-sample hooks, so
Opacus would silently drop it — train without it under local DP). Class weights derived
from the silo's own label counts would make every row's loss depend on the other rows'
labels, outside the per-row sensitivity the ε assumes: the ClientApp trains without class
weights under local DP; ``class_weights`` here is for weights fixed independently of the
data (e.g. a public prior).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.validators import ModuleValidator
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from strategies.privacy.accountant import (
    FederatedAccountant,
    Mechanism,
    PrivacyBudget,
    calibrate_noise_multiplier,
    check_delta,
    check_epsilon,
    check_noise_multiplier,
)
from strategies.privacy.randomness import secret_generator

__all__ = ["LOCAL_DP_STATE_KEY", "PrivateTrainer", "make_private_trainer"]

LOG = logging.getLogger(__name__)

#: Suggested record key for a silo's accountant state (a ConfigRecord); the ClientApp
#: keeps it in the silo's state file instead (fl_app.silo_state), so it survives a resume.
LOCAL_DP_STATE_KEY = "dp-accountant"


def _unpack(data: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = data
    elif hasattr(data, "x") and hasattr(data, "y"):
        x, y = data.x, data.y
    else:
        raise ValueError("data must be an (x, y) pair of numpy arrays or have .x and .y")
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"data has {len(x)} feature rows but {len(y)} labels")
    if len(y) == 0:
        raise ValueError("data is empty: DP-SGD needs at least one training row")
    return x, y


def _generators(
    generator: torch.Generator | int | None, noise_generator: torch.Generator | None = None
) -> tuple[torch.Generator, torch.Generator]:
    """(Poisson-sampling generator, noise generator)."""
    if isinstance(generator, bool):
        raise ValueError("generator must be a torch.Generator, an int seed or None")
    if noise_generator is not None:
        if not isinstance(generator, torch.Generator) or not isinstance(
            noise_generator, torch.Generator
        ):
            raise ValueError(
                "noise_generator needs generator to be a torch.Generator too (the sampling "
                f"generator); got generator={generator!r}, noise_generator={noise_generator!r}"
            )
        if generator is noise_generator:
            raise ValueError("generator and noise_generator must be two distinct generators")
        return generator, noise_generator
    if generator is None:
        return secret_generator(), secret_generator()
    if isinstance(generator, int):
        sampling = torch.Generator().manual_seed(generator)
    elif isinstance(generator, torch.Generator):
        sampling = generator
    else:
        raise ValueError(
            f"generator must be a torch.Generator, an int seed or None; got {generator!r}"
        )
    # Reproducible mode: the noise stream follows from the sampling generator.
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=sampling))
    return sampling, torch.Generator().manual_seed(noise_seed)


class PrivateTrainer:
    """DP-SGD training of a model on one silo's data (build with
    :func:`make_private_trainer`).

    Attributes
    ----------
    model : nn.Module
        The caller's model, trained in place (its state-dict keys are unchanged).
    optimizer : opacus.optimizers.DPOptimizer
        Clips per-sample gradients and adds noise.
    data_loader : opacus.data_loader.DPDataLoader
        Poisson-sampled batches.
    accountant : FederatedAccountant
        Cumulative accountant (restored history + this round's steps).
    noise_multiplier, max_grad_norm, sample_rate, delta : float
    steps_per_epoch : int
    budget : PrivacyBudget or None
        Set when the trainer was built from a target ε: :meth:`train` refuses to exceed it.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Any,
        data_loader: DataLoader,
        hooks: Any,
        accountant: FederatedAccountant,
        noise_multiplier: float,
        max_grad_norm: float,
        delta: float,
        budget: PrivacyBudget | None,
        class_weights: torch.Tensor | None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.data_loader = data_loader
        self._hooks = hooks
        self.accountant = accountant
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.delta = delta
        self.budget = budget
        self.class_weights = class_weights
        self.steps_per_epoch = len(data_loader)
        self.sample_rate = 1.0 / self.steps_per_epoch

    def can_afford(self, epochs: int) -> bool:
        """True if training ``epochs`` more epochs keeps ε within the budget (always true
        without a budget)."""
        if self.budget is None:
            return True
        return self.budget.can_afford_next_round(
            self.accountant,
            epochs * self.steps_per_epoch,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
        )

    def train(self, epochs: int) -> dict[str, float]:
        """Train ``epochs`` epochs of DP-SGD; returns ``train-loss`` and :meth:`metrics`.

        With a budget that ``epochs`` more epochs would exceed, nothing is trained (the
        model is unchanged, ``dp-skipped`` = 1) and a warning is logged.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an integer ≥ 1; got {epochs!r}")
        if not self.can_afford(epochs):
            LOG.warning(
                "local DP budget: %d more epochs would exceed ε = %g (spent %.4f); "
                "skipping training this round",
                epochs,
                self.budget.target_epsilon,
                self.epsilon(),
            )
            return {"train-loss": float("nan"), **self.metrics(), "dp-skipped": 1.0}
        self.model.train()
        with warnings.catch_warnings():
            # Opacus' hooks on a first layer whose input needs no gradient (always the case).
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            total, seen = self._epochs(epochs)
        return {
            "train-loss": total / seen if seen else float("nan"),
            **self.metrics(),
            "dp-skipped": 0.0,
        }

    def _epochs(self, epochs: int) -> tuple[float, int]:
        weights = self.class_weights
        total, seen = 0.0, 0
        for _ in range(epochs):
            for xb, yb in self.data_loader:
                self.optimizer.zero_grad()
                per_row = F.cross_entropy(self.model(xb), yb, reduction="none")
                if weights is not None:
                    per_row = per_row * weights[yb]
                # Mean over the drawn batch (Opacus' loss_reduction="mean"): each row's
                # gradient is its own loss's, independent of the other rows.
                loss = per_row.sum() / max(len(yb), 1)
                loss.backward()
                self.optimizer.step()  # clips, noises, and steps the accountant
                total += float(per_row.detach().sum())
                seen += len(yb)
        return total, seen

    def epsilon(self, delta: float | None = None) -> float:
        """Cumulative ε of this silo (all restored rounds plus this one) at ``delta``."""
        return self.accountant.epsilon(self.delta if delta is None else delta)

    def metrics(self) -> dict[str, float]:
        """``dp-epsilon`` (cumulative), ``dp-delta``, ``dp-noise-multiplier``,
        ``dp-max-grad-norm`` and ``dp-steps`` (cumulative optimiser steps)."""
        return {
            "dp-epsilon": self.epsilon(),
            "dp-delta": self.delta,
            "dp-noise-multiplier": self.noise_multiplier,
            "dp-max-grad-norm": self.max_grad_norm,
            "dp-steps": float(self.accountant.num_steps),
        }

    def accountant_state(self) -> dict[str, list[float] | list[int]]:
        """The accountant history as ``{"noise-multiplier": […], "sample-rate": […],
        "steps": […]}`` — store it as ``ConfigRecord(state)`` in ``context.state``."""
        return self.accountant.state_dict()

    def close(self) -> None:
        """Remove Opacus' hooks and per-sample attributes from the model."""
        if self._hooks is not None:
            self._hooks.cleanup()
            self._hooks = None

    def __enter__(self) -> PrivateTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_private_trainer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Any,
    *,
    batch_size: int,
    max_grad_norm: float,
    delta: float,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    epochs: int | None = None,
    accountant_state: Mapping[str, Sequence[float] | Sequence[int]] | None = None,
    mechanism: Mechanism = "rdp",
    generator: torch.Generator | int | None = None,
    noise_generator: torch.Generator | None = None,
    class_weights: torch.Tensor | None = None,
) -> PrivateTrainer:
    """DP-SGD for ``model`` on ``data`` with Opacus (Poisson sampling, flat clipping).

    Parameters
    ----------
    model : nn.Module
        Trained in place; must pass Opacus' ``ModuleValidator``.
    optimizer : torch.optim.Optimizer
        Over ``model.parameters()`` (e.g. SGD with momentum); wrapped into a DPOptimizer.
    data : (x, y) numpy arrays, or an object with ``.x`` / ``.y`` (``ArrayDataset``)
        The silo's training rows.
    batch_size : int
        Expected batch size; Poisson sampling draws each row with q = 1/⌈n/batch_size⌉.
    max_grad_norm : float
        Per-sample gradient clipping norm, > 0.
    delta : float
        δ of the reported ε (and the target δ with ``target_epsilon``); < 1/n.
    noise_multiplier : float, optional
        σ ≥ 0. Give either this or ``target_epsilon``.
    target_epsilon : float, optional
        Budget ε > 0 for ``epochs`` epochs in total: σ is calibrated so that ``epochs``
        epochs at this sample rate end at ≤ ``target_epsilon``. Across federated rounds
        pass the whole run's plan (``training.local-epochs × num-server-rounds``, the epochs of
        earlier rounds included): every round then gets the same σ, the restored history
        plus this round stays on plan, and :meth:`PrivateTrainer.train` skips any round
        that would exceed the budget.
    epochs : int, optional
        Planned total epochs for calibration (required with ``target_epsilon``).
    accountant_state : mapping, optional
        History from a previous round's :meth:`PrivateTrainer.accountant_state` (e.g. read
        back from ``context.state``); ε is then cumulative across rounds.
    mechanism : {"rdp", "prv"}
        Accountant.
    generator : torch.Generator or int, optional
        ``None`` (the default): Poisson sampling and noise come from two secret generators
        (:func:`~strategies.privacy.randomness.secret_generator`). A generator draws the
        batches; with ``noise_generator`` the noise comes from that one, else from a seed
        drawn from ``generator`` (torch keeps 32 bits of it: never secret, even if
        ``generator`` is). An int seeds the latter; seeded noise can be regenerated by
        anyone who knows the seed (research only).
    noise_generator : torch.Generator, optional
        The Gaussian noise's generator (with a ``generator``; e.g. the silo's secret
        generators, persisted between rounds so a replayed round gets fresh noise).
    class_weights : Tensor, optional
        Per-class loss weights, applied per row. They must not depend on the silo's data
        (e.g. its label counts): the ε would not cover them.
    """
    x, y = _unpack(data)
    n = len(y)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer ≥ 1; got {batch_size!r}")
    if (
        isinstance(max_grad_norm, bool)
        or not isinstance(max_grad_norm, int | float)
        or not math.isfinite(max_grad_norm)
        or max_grad_norm <= 0
    ):
        raise ValueError(
            f"max_grad_norm must be a finite number > 0 (per-sample gradient clipping "
            f"norm); got {max_grad_norm!r}. Typical values are 0.1–10, e.g. 1.0."
        )
    delta = check_delta(delta, n_records=n, name="delta")
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ValueError(
            "give exactly one of noise_multiplier (fixed σ) or target_epsilon (σ calibrated "
            "with delta and epochs)"
        )
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(
            f"{type(model).__name__} is not compatible with Opacus DP-SGD: "
            + "; ".join(str(e) for e in errors)
            + ". Replace the offending layers (e.g. BatchNorm → GroupNorm) in the task's model."
        )

    sampling_gen, noise_gen = _generators(generator, noise_generator)
    dataset = TensorDataset(
        torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))
    )
    loader = DPDataLoader.from_data_loader(
        DataLoader(dataset, batch_size=batch_size), generator=sampling_gen
    )
    steps_per_epoch = len(loader)
    sample_rate = 1.0 / steps_per_epoch  # what Opacus' optimiser hook accounts per step

    accountant = FederatedAccountant(
        mechanism,
        0.0 if noise_multiplier is None else check_noise_multiplier(noise_multiplier),
        sample_rate,
    )
    if accountant_state is not None:
        accountant.load_state_dict(accountant_state)

    budget = None
    if target_epsilon is not None:
        target_epsilon = check_epsilon(target_epsilon)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(
                "epochs (the planned total of local epochs, e.g. training.local-epochs × "
                f"num-server-rounds) must be an integer ≥ 1 with target_epsilon; got {epochs!r}"
            )
        noise_multiplier = calibrate_noise_multiplier(
            target_epsilon,
            delta,
            sample_rate,
            epochs,
            mechanism,
            steps_per_round=steps_per_epoch,
            n_records=n,
        )
        accountant.noise_multiplier = noise_multiplier
        budget = PrivacyBudget(target_epsilon, delta, n_records=n)
    sigma = float(noise_multiplier)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        engine = PrivacyEngine(accountant=mechanism)
    engine.accountant = accountant.opacus_accountant  # Opacus' hook steps our accountant
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        hooks, dp_optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=float(max_grad_norm),
            poisson_sampling=False,  # `loader` already samples Poisson with sampling_gen
            noise_generator=noise_gen,
            wrap_model=False,
        )
    hooks.forbid_grad_accumulation()
    if class_weights is not None:
        class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
    return PrivateTrainer(
        model=model,
        optimizer=dp_optimizer,
        data_loader=dp_loader,
        hooks=hooks,
        accountant=accountant,
        noise_multiplier=sigma,
        max_grad_norm=float(max_grad_norm),
        delta=delta,
        budget=budget,
        class_weights=class_weights,
    )
