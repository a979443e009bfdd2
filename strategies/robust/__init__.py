"""Pure-tensor Byzantine-robust aggregation.

* :mod:`.aggregators` — aggregation rules ``rule(updates, weights=None, **params) -> (d,)``.
* :mod:`.preaggregators` — transforms ``(updates, weights) -> (updates', weights')`` and
  :func:`compose` to chain them with a rule.
* :mod:`.attacks` — model-poisoning attacks for simulating the threat model.

``updates`` is an ``(n_clients, d)`` floating tensor of flattened client updates and
``weights`` an optional ``(n_clients,)`` non-negative tensor. Rule parameters are passed by
keyword, e.g. ``AGGREGATORS["krum"](updates, weights, num_byzantine=2)`` or
``compose([PRE_AGGREGATORS["nnm"]], AGGREGATORS["krum"])(updates, num_byzantine=2)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .aggregators import (
    bulyan,
    centered_clipping,
    coordinate_median,
    fltrust,
    geometric_median,
    krum,
    multi_krum,
    norm_clipping,
    trimmed_mean,
    weighted_mean,
)
from .attacks import ATTACKS, alie, alie_z, gaussian_noise, ipm, scaling, sign_flip
from .preaggregators import bucketing, compose, nearest_neighbor_mixing

AGGREGATORS: dict[str, Callable[..., torch.Tensor]] = {
    "mean": weighted_mean,
    "median": coordinate_median,
    "trimmed-mean": trimmed_mean,
    "krum": krum,
    "multi-krum": multi_krum,
    "bulyan": bulyan,
    "geomed": geometric_median,
    "cclip": centered_clipping,
    "norm-clip": norm_clipping,
}
"""Rule name -> ``rule(updates, weights=None, **params)``. FLTrust needs a server update and
is exported separately as :func:`fltrust`."""

PRE_AGGREGATORS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "nnm": nearest_neighbor_mixing,
    "bucketing": bucketing,
}
"""Pre-aggregator name -> ``pre(updates, weights=None, **params) -> (updates', weights')``."""

__all__ = [
    "AGGREGATORS",
    "ATTACKS",
    "PRE_AGGREGATORS",
    "alie",
    "alie_z",
    "bucketing",
    "bulyan",
    "centered_clipping",
    "compose",
    "coordinate_median",
    "fltrust",
    "gaussian_noise",
    "geometric_median",
    "ipm",
    "krum",
    "multi_krum",
    "nearest_neighbor_mixing",
    "norm_clipping",
    "scaling",
    "sign_flip",
    "trimmed_mean",
    "weighted_mean",
]
