"""``power-of-choice``: the highest local loss among d candidates (Cho et al., 2020)."""

from __future__ import annotations

import math

from strategies.selection.base import POLICIES, Choice, SelectionPolicy, weighted_sample


@POLICIES.register("power-of-choice", family="statistical")
class PowerOfChoice(SelectionPolicy):
    """Power-of-choice (Y. J. Cho, J. Wang, G. Joshi, "Client Selection in Federated
    Learning: Convergence Analysis and Power-of-Choice Selection Strategies", 2020,
    arXiv:2010.01243): draw d candidates without replacement ∝ their example counts, keep
    the m with the highest local loss.

    This is the paper's communication-free variant (rpow-d): the loss is the one each silo
    last reported with its update, not a fresh query of all d candidates (which would cost
    one more round trip per round). A silo never heard from has loss +∞, so every silo is
    tried early on. ``selection.candidates`` = d (0 = 2m). With
    ``selection.quality-aware``, the loss is scaled by the silo's contribution quality
    factor before ranking."""

    quality_aware = True

    def choose(self, server_round, candidates, k, rng) -> Choice:
        d = self.section.candidates or 2 * k
        d = min(max(d, k), len(candidates))
        sizes = [self.silo(p).num_examples or 1 for p in candidates]
        drawn = weighted_sample(candidates, sizes, d, rng)
        order = {p: i for i, p in enumerate(drawn)}  # the draw breaks ties

        quality = self.quality(drawn)

        def loss(p: int) -> float:
            value = self.silo(p).loss
            return math.inf if value is None else value * quality[p]

        ranked = sorted(drawn, key=lambda p: (-loss(p), order[p]))
        chosen = ranked[:k]
        reasons = {
            p: (
                f"loss {loss(p):.4g}, rank {i + 1} of d={d} candidates"
                + (f" (quality ×{quality[p]:.3g})" if self.contribution else "")
                if math.isfinite(loss(p))
                else f"no loss reported yet (tried first), among d={d} candidates"
            )
            for i, p in enumerate(chosen)
        }
        return chosen, reasons, {p: loss(p) for p in chosen}
