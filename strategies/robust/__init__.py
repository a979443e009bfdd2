"""Pure-tensor Byzantine-robust aggregation.

* :mod:`.rules` — aggregation rules ``rule(updates, weights=None, **params) -> (d,)``, one
  file a rule, each registered in :data:`RULES` (:mod:`.registry`) under the name of the
  strategy that uses it.
* :mod:`.checks` and :mod:`.kernels` — the input checks and numerical kernels they share.
* :mod:`.preaggregators` — transforms ``(updates, weights) -> (updates', weights')`` and
  :func:`compose` to chain them with a rule.
* :mod:`.attacks` — model-poisoning attacks for simulating the threat model.

``updates`` is an ``(n_clients, d)`` floating tensor of flattened client updates and
``weights`` an optional ``(n_clients,)`` non-negative tensor. Rule parameters are passed by
keyword, e.g. ``RULES["robust-krum"](updates, weights, num_byzantine=2)`` or
``compose([PRE_AGGREGATORS["nnm"]], RULES["robust-krum"])(updates, num_byzantine=2)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .attacks import ATTACKS, alie, alie_z, gaussian_noise, ipm, scaling, sign_flip
from .preaggregators import bucketing, compose, nearest_neighbor_mixing
from .registry import RULES

# Register the built-in rules (every module of .rules) before importing them by name, so
# they are recorded as built-ins, and entry-point rules are found.
RULES.load()

from .rules.bulyan import bulyan  # noqa: E402
from .rules.cclip import centered_clipping  # noqa: E402
from .rules.fltrust import fltrust  # noqa: E402
from .rules.geomed import geometric_median  # noqa: E402
from .rules.krum import krum, multi_krum  # noqa: E402
from .rules.mean import weighted_mean  # noqa: E402
from .rules.median import coordinate_median  # noqa: E402
from .rules.norm_clip import norm_clipping  # noqa: E402
from .rules.trimmed_mean import trimmed_mean  # noqa: E402

PRE_AGGREGATORS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "nnm": nearest_neighbor_mixing,
    "bucketing": bucketing,
}
"""Pre-aggregator name -> ``pre(updates, weights=None, **params) -> (updates', weights')``."""


def __getattr__(name: str) -> Mapping[str, Callable[..., torch.Tensor]]:
    """``AGGREGATORS``: a read-only name → rule view of :data:`RULES`, taken when read (so
    it includes rules added since; the registry is the one source of truth)."""
    if name == "AGGREGATORS":
        return RULES.mapping()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AGGREGATORS",
    "ATTACKS",
    "PRE_AGGREGATORS",
    "RULES",
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
