"""Model-poisoning attacks for *simulating* the Byzantine threat model.

This module is a threat-model simulation tool for evaluating the robust aggregators in
:mod:`strategies.robust.aggregators`; it is not a defense. Every attack is a pure function

    attack(honest_updates, num_byzantine, **params) -> byzantine_updates

where ``honest_updates`` is the ``(h, d)`` stack of honest clients' updates (an omniscient
adversary, as in the cited papers) and the result is an ``(f, d)`` tensor with
``f = num_byzantine``, in the dtype and device of ``honest_updates``. Append it to the honest
stack to obtain the ``(h + f, d)`` input of an aggregation rule.

Randomness comes only from an explicit ``torch.Generator`` argument. Data-poisoning attacks
(e.g. label flipping) act on client data, not on updates, and live with the tasks.

:func:`inflate_claim` attacks the other half of a reply: the ``num-examples`` a silo claims,
which weighted aggregation rules use as its weight (the weight-inflation attack of the
simulation sends :func:`sign_flip` updates with inflated claims).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from statistics import NormalDist

import torch

from .aggregators import _check_int, _check_positive, _check_updates

__all__ = [
    "ATTACKS",
    "alie",
    "alie_z",
    "gaussian_noise",
    "inflate_claim",
    "ipm",
    "scaling",
    "sign_flip",
]

#: Default factor of :func:`inflate_claim`.
INFLATION_FACTOR = 1000.0


def _prepare(honest_updates: torch.Tensor, num_byzantine: object) -> tuple[torch.Tensor, int]:
    x = _check_updates(honest_updates, "honest_updates")
    f = _check_int(num_byzantine, "num_byzantine")
    if f < 0:
        raise ValueError(f"num_byzantine must be >= 0; got {f}")
    return x, f


def _repeat(vector: torch.Tensor, f: int, like: torch.Tensor) -> torch.Tensor:
    return vector.to(like.dtype).unsqueeze(0).expand(f, -1).clone()


def _check_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number; got {value!r}")
    return float(value)


def sign_flip(honest_updates: torch.Tensor, num_byzantine: int) -> torch.Tensor:
    """Sign flipping: every Byzantine client sends the negated honest mean ``-mean(honest)``.

    A standard baseline attack (e.g. used in L. Li, W. Xu, T. Chen, G. B. Giannakis, Q. Ling,
    "RSA: Byzantine-Robust Stochastic Aggregation Methods for Distributed Learning from
    Heterogeneous Datasets", AAAI 2019, arXiv:1811.03761). Equals :func:`ipm` with
    ``epsilon = 1``.

    Args:
        honest_updates: ``(h, d)`` honest updates.
        num_byzantine: ``f >= 0``, number of Byzantine updates to produce.

    Returns:
        ``(f, d)`` Byzantine updates.
    """
    x, f = _prepare(honest_updates, num_byzantine)
    return _repeat(-x.to(torch.float64).mean(dim=0), f, x)


def gaussian_noise(
    honest_updates: torch.Tensor,
    num_byzantine: int,
    *,
    std: float = 1.0,
    generator: torch.Generator,
) -> torch.Tensor:
    """Gaussian attack: each Byzantine client sends an independent ``N(0, std^2 I)`` vector.

    Baseline attack from P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer, "Machine
    Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017,
    arXiv:1703.02757.

    Args:
        honest_updates: ``(h, d)`` honest updates (only the shape, dtype and device are used).
        num_byzantine: ``f >= 0``, number of Byzantine updates to produce.
        std: noise standard deviation (> 0).
        generator: explicit, seeded ``torch.Generator`` (required: no global RNG is used).

    Returns:
        ``(f, d)`` Byzantine updates.
    """
    x, f = _prepare(honest_updates, num_byzantine)
    std = _check_positive(std, "std")
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            "generator must be a seeded torch.Generator (no global RNG is used); "
            f"got {type(generator).__name__}"
        )
    noise = torch.randn(
        f, x.shape[1], generator=generator, dtype=torch.float64, device=generator.device
    )
    return (std * noise).to(device=x.device, dtype=x.dtype)


def scaling(honest_updates: torch.Tensor, num_byzantine: int, *, factor: float) -> torch.Tensor:
    """Scaling (boosting) attack: each Byzantine client sends ``factor * mean(honest)``.

    Models the boosted updates of model-replacement attacks: E. Bagdasaryan, A. Veit, Y. Hua,
    D. Estrin, V. Shmatikov, "How To Backdoor Federated Learning", AISTATS 2020,
    arXiv:1807.00459.

    Args:
        honest_updates: ``(h, d)`` honest updates.
        num_byzantine: ``f >= 0``, number of Byzantine updates to produce.
        factor: finite scale factor (negative values also flip the direction).

    Returns:
        ``(f, d)`` Byzantine updates.
    """
    x, f = _prepare(honest_updates, num_byzantine)
    factor = _check_real(factor, "factor")
    return _repeat(factor * x.to(torch.float64).mean(dim=0), f, x)


def alie_z(num_clients: int, num_byzantine: int) -> float:
    """The ALIE ``z_max`` for ``n = num_clients`` total clients of which ``f`` are Byzantine.

    ``s = floor(n / 2 + 1) - f`` honest clients must be "won over"; ``z_max`` is the normal
    quantile ``Phi^{-1}((n - s) / n)``. Requires ``0 <= f <= floor(n / 2)`` (so ``s >= 1``).
    """
    n = _check_int(num_clients, "num_clients")
    f = _check_int(num_byzantine, "num_byzantine")
    s = math.floor(n / 2 + 1) - f
    if n < 1 or f < 0 or s < 1:
        raise ValueError(
            f"num_byzantine={f} is invalid for ALIE with n={n} total clients: it needs "
            f"0 <= num_byzantine <= floor(n/2) = {n // 2}"
        )
    return NormalDist().inv_cdf((n - s) / n)


def alie(
    honest_updates: torch.Tensor, num_byzantine: int, *, z: float | None = None
) -> torch.Tensor:
    """ALIE ("A little is enough"): ``mean - z * std`` of the honest updates, per coordinate.

    Reference: M. Baruch, G. Baruch, Y. Goldberg, "A Little Is Enough: Circumventing Defenses
    For Distributed Learning", NeurIPS 2019, arXiv:1902.06156.

    With ``n = h + f`` total clients, ``z`` defaults to ``z_max = Phi^{-1}((n - s) / n)`` where
    ``s = floor(n / 2 + 1) - f`` (see :func:`alie_z`); this requires ``f <= floor(n / 2)``.
    ``std`` is the coordinate-wise sample standard deviation (population standard deviation if
    ``h = 1``). All Byzantine clients send the same vector.

    Args:
        honest_updates: ``(h, d)`` honest updates.
        num_byzantine: ``f >= 0``, number of Byzantine updates to produce.
        z: override for the number of standard deviations (finite).

    Returns:
        ``(f, d)`` Byzantine updates.
    """
    x, f = _prepare(honest_updates, num_byzantine)
    h = x.shape[0]
    z = alie_z(h + f, f) if z is None else _check_real(z, "z")
    x64 = x.to(torch.float64)
    std = x64.std(dim=0, correction=1 if h > 1 else 0)
    return _repeat(x64.mean(dim=0) - z * std, f, x)


def ipm(honest_updates: torch.Tensor, num_byzantine: int, *, epsilon: float = 0.1) -> torch.Tensor:
    """Inner product manipulation (IPM): each Byzantine client sends ``-epsilon * mean(honest)``.

    Reference: C. Xie, O. Koyejo, I. Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD
    by Inner Product Manipulation", UAI 2019, arXiv:1903.03936. A small ``epsilon`` (default
    0.1) keeps the malicious vectors close to the honest ones while making the inner product of
    the aggregate with the true gradient negative.

    Args:
        honest_updates: ``(h, d)`` honest updates.
        num_byzantine: ``f >= 0``, number of Byzantine updates to produce.
        epsilon: positive finite scale.

    Returns:
        ``(f, d)`` Byzantine updates.
    """
    x, f = _prepare(honest_updates, num_byzantine)
    epsilon = _check_positive(epsilon, "epsilon")
    return _repeat(-epsilon * x.to(torch.float64).mean(dim=0), f, x)


def inflate_claim(num_examples: float, factor: float = INFLATION_FACTOR) -> float:
    """Weight inflation: a Byzantine silo claims ``factor`` × its ``num_examples``.

    The claim is the weight of FedAvg and of any rule weighted by it, and the server cannot
    check it. Integer claims stay integers (a plausible-looking count passes validation).

    Args:
        num_examples: the silo's true, finite, non-negative example count.
        factor: finite inflation factor (> 0; default 1000).

    Returns:
        The inflated claim, an ``int`` if ``num_examples`` is one.
    """
    factor = _check_positive(factor, "factor")
    count = _check_real(num_examples, "num_examples")
    if count < 0:
        raise ValueError(f"num_examples must be >= 0; got {num_examples!r}")
    if isinstance(num_examples, numbers.Integral):
        return round(count * factor)
    return count * factor


ATTACKS: dict[str, Callable[..., torch.Tensor]] = {
    "sign-flip": sign_flip,
    "gaussian": gaussian_noise,
    "scaling": scaling,
    "alie": alie,
    "ipm": ipm,
}
"""Attack name -> function ``(honest_updates, num_byzantine, **params) -> (f, d) tensor``."""
