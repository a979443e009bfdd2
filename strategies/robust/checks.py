"""Input checks shared by the robust aggregation rules, pre-aggregators and attacks.

Every check raises ``ValueError`` whose message names the offending argument, the value
received and the allowed range, and returns the validated value (converted where said).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

__all__ = [
    "check_inputs",
    "check_int",
    "check_num_byzantine",
    "check_positive",
    "check_updates",
    "check_vector",
    "check_weights",
]


def check_updates(updates: torch.Tensor, name: str = "updates") -> torch.Tensor:
    """Validate a stacked ``(n, d)`` floating, finite, non-empty tensor and return it."""
    if not isinstance(updates, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of shape (n_clients, d); got {type(updates).__name__}"
        )
    if updates.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (n_clients, d); got a {updates.dim()}-D tensor of "
            f"shape {tuple(updates.shape)}"
        )
    if not updates.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype; got {updates.dtype}")
    n, d = updates.shape
    if n < 1 or d < 1:
        raise ValueError(
            f"{name} must hold at least one client and one coordinate; got shape {(n, d)}"
        )
    # One summation pass: NaN and inf propagate through a sum, so a finite total proves every
    # entry finite. A non-finite total can also be overflow, so confirm entry by entry.
    if not bool(torch.isfinite(updates.sum())):
        bad = int((~torch.isfinite(updates)).sum())
        if bad:
            raise ValueError(f"{name} must be finite; got {bad} NaN/inf entries")
    return updates


def check_weights(weights: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """Validate weights of shape ``(n,)`` and return them as a float64 tensor on ``device``.

    ``None`` means uniform weights.
    """
    if weights is None:
        return torch.ones(n, dtype=torch.float64, device=device)
    if not isinstance(weights, torch.Tensor):
        try:
            weights = torch.as_tensor(weights)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"weights must be None or a tensor of shape ({n},); got {type(weights).__name__}"
            ) from exc
    if weights.dtype == torch.bool or weights.is_complex():
        raise ValueError(f"weights must be real-valued; got dtype {weights.dtype}")
    if tuple(weights.shape) != (n,):
        raise ValueError(
            f"weights must have shape ({n},) to match updates; got shape {tuple(weights.shape)}"
        )
    w = weights.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"weights must be finite; got {weights.tolist()}")
    if bool((w < 0).any()):
        raise ValueError(f"weights must be non-negative (>= 0); got {weights.tolist()}")
    if float(w.sum()) <= 0.0:
        raise ValueError(f"weights must have a positive sum (> 0); got {weights.tolist()}")
    return w


def check_inputs(
    updates: torch.Tensor, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`check_updates` then :func:`check_weights`: the validated ``(n, d)`` updates and
    their float64 ``(n,)`` weights (ones for ``None``) on the updates' device."""
    x = check_updates(updates)
    return x, check_weights(weights, x.shape[0], x.device)


def check_int(value: object, name: str) -> int:
    """Return ``value`` as a Python int, rejecting bools, floats and other non-integers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    return int(value)


def check_num_byzantine(
    num_byzantine: object, n: int, rule: str, min_clients: Callable[[int], int], requirement: str
) -> int:
    """Validate ``num_byzantine`` for ``rule`` with ``n`` clients.

    ``min_clients(f)`` is the smallest number of clients the rule needs to tolerate ``f``
    Byzantine clients; ``requirement`` spells that condition out for the error message.
    """
    f = check_int(num_byzantine, "num_byzantine")
    max_f = -1
    while max_f + 1 <= n and min_clients(max_f + 1) <= n:
        max_f += 1
    if f < 0 or f > max_f:
        if max_f < 0:
            allowed = f"no value is allowed with n={n} clients (at least {min_clients(0)} needed)"
        else:
            allowed = f"allowed range with n={n} clients: 0 <= num_byzantine <= {max_f}"
        fix = (
            f"lower num_byzantine or use at least {min_clients(max(f, 0))} clients"
            if f >= 0
            else "num_byzantine must be >= 0"
        )
        raise ValueError(
            f"num_byzantine={f} is invalid for {rule}, which requires {requirement}; "
            f"{allowed}. Fix: {fix}."
        )
    return f


def check_positive(value: object, name: str, allow_inf: bool = False) -> float:
    """Validate a strictly positive real number (optionally allowing +inf)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive real number; got {value!r}")
    v = float(value)
    if math.isnan(v) or v <= 0 or (math.isinf(v) and not allow_inf):
        rng = "(0, inf]" if allow_inf else "(0, inf)"
        raise ValueError(f"{name} must be in {rng}; got {value!r}")
    return v


def check_vector(vector: object, d: int, name: str, device: torch.device) -> torch.Tensor:
    """Validate a finite real ``(d,)`` tensor and return it as float64 on ``device``."""
    if not isinstance(vector, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape ({d},); got {type(vector)}")
    if tuple(vector.shape) != (d,):
        raise ValueError(
            f"{name} must have shape ({d},) to match updates; got shape {tuple(vector.shape)}"
        )
    if vector.dtype == torch.bool or vector.is_complex():
        raise ValueError(f"{name} must be real-valued; got dtype {vector.dtype}")
    v = vector.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} must be finite; got NaN/inf entries")
    return v
