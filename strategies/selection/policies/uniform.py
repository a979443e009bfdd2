"""``random``: every silo equally likely, as Flower samples."""

from __future__ import annotations

import random

from strategies.selection.base import POLICIES, Choice, SelectionPolicy


@POLICIES.register("random", family="uniform")
class UniformRandom(SelectionPolicy):
    """Uniform sampling without replacement. Without the fairness guard it is exactly
    Flower's own seeded sampling (the app leaves the draw to Flower and records it); behind
    the guard it draws the remaining slots the same way, among the silos not owed a round."""

    uniform = True

    def choose(self, server_round, candidates, k, rng) -> Choice:
        # The stream Flower's sample_nodes draws from under SeededSampling.
        draw = random.Random(f"{self.seed}/train/{server_round}")
        chosen = sorted(draw.sample(list(candidates), k))
        return chosen, {p: "uniform random" for p in chosen}, {p: 1.0 for p in chosen}
