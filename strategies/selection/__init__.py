"""Participant selection: which silos train each round, and why.

A *policy* (:data:`POLICIES`, one file each in :mod:`strategies.selection.policies`, or a
``fedsilo.selection`` entry point) picks ``m`` of the connected silos from what the server has
seen of them: who answered, how fast, with what training loss and how many examples. Its
state (:class:`SiloHistory` per silo) is a plain dict kept in the strategy state, so a
resumed run selects exactly as the uninterrupted one. The draws are seeded by
``(seed, "selection", round)``: a rerun with the same config selects the same silos.

Every policy sits behind the same fairness guard (``selection.fairness-rounds`` = K): a silo
left out K rounds in a row is selected in the next round, before the policy picks the rest.
"""

from strategies.selection.base import (
    GUARD,
    POLICIES,
    Outcome,
    Selection,
    SelectionPolicy,
    SelectionSection,
    SiloHistory,
    make_policy,
)

__all__ = [
    "GUARD",
    "POLICIES",
    "Outcome",
    "Selection",
    "SelectionPolicy",
    "SelectionSection",
    "SiloHistory",
    "make_policy",
]
