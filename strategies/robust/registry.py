"""The registry of aggregation rules: name → pure tensor function plus its metadata.

Each rule registers itself in its own file of :mod:`strategies.robust.rules` (every module
there is imported when the registry is first read, so a new file needs no list), or from
another package through the entry-point group ``fedsilo.rules``. A rule is registered under
the name of the Flower-app strategy that uses it, with

* ``family``: ``"robust"`` (selects or orders individual updates) or ``"mean-based"``;
* ``compatible``: the cross-cutting features it works with (``central-dp``, ``secagg``,
  ``topk``);
* ``params``: its keyword parameters that come from the run config's robust section;
* ``section``: a :class:`fl_core.config.Section` in the rule's own file whose fields are
  further keyword parameters, set through ``robust.rule-params``
  (:mod:`strategies.robust.rule_params`);
* ``uses_previous=True`` if it takes the previous aggregate as ``center``;
* ``needs_server_update=True`` if it takes the server's own update as ``server_update``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

import torch

from fl_core.registry import Registry

__all__ = ["NEEDS_INDIVIDUAL_UPDATES", "RULES"]

RULES: Registry[Callable[..., torch.Tensor]] = Registry(
    "aggregation rule", group="fedsilo.rules", builtins=("strategies.robust.rules",)
)
"""Aggregation rules ``rule(updates, weights=None, **params) -> (d,)``, by strategy name."""

#: ``compatible=`` of a rule that selects, orders or clips individual updates: secure
#: aggregation hides them from the server, central DP bounds one silo's effect on a mean
#: (clip-norm / n), and top-k updates are sparse with different supports (medians, trimming
#: and distances would judge the sparsity pattern, not the update).
NEEDS_INDIVIDUAL_UPDATES = MappingProxyType({"central-dp": False, "secagg": False, "topk": False})
