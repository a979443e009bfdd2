"""``oort``: statistical utility × a system-speed penalty, with exploration (Lai et al., 2021)."""

from __future__ import annotations

import math
import statistics

from strategies.selection.base import POLICIES, Choice, SelectionPolicy, weighted_sample

#: Exploration decays ×0.98 a round down to this share (the paper's settings).
EXPLORATION_DECAY, EXPLORATION_MIN = 0.98, 0.2
#: Exploitation samples among the silos within this fraction of the cut-off utility.
CUTOFF = 0.95
#: Coefficient of the staleness bonus sqrt(c · ln R / L).
STALENESS = 0.1


@POLICIES.register("oort", family="statistical")
class Oort(SelectionPolicy):
    """Oort's participant selection (F. Lai, X. Zhu, H. V. Madhyastha, M. Chowdhury,
    "Oort: Efficient Federated Learning via Guided Participant Selection", OSDI 2021):

    * utility of a silo already tried: |B| · L × (T / t)^α if its last round took t > T, where
      |B| is its example count and L its reported mean training loss (the paper's
      sqrt(mean of squared sample losses) needs per-sample losses, which silos do not send),
      plus the staleness bonus sqrt(0.1 · ln R / L_i) for a silo last selected in round L_i;
    * exploitation, (1 − ε) of the slots: sampled ∝ utility among the silos whose utility is
      at least 95 % of the cut-off (the utility ranked at the number of exploitation slots);
    * exploration, ε of the slots: silos never tried, at random; ε starts at
      ``selection.exploration`` and decays ×0.98 a round to 0.2;
    * with ``selection.quality-aware``, L is scaled by the silo's contribution quality
      factor (not in the paper: its loss-driven utility prefers silos with noisy labels);
    * T = ``selection.preferred-seconds`` (0 = the median duration seen so far), α =
      ``selection.speed-penalty``. Oort's pacer, which moves T during training, is not
      implemented: T is fixed or the running median."""

    def epsilon(self, server_round: int) -> float:
        start = self.section.exploration
        return max(min(start, EXPLORATION_MIN), start * EXPLORATION_DECAY ** (server_round - 1))

    def preferred_seconds(self) -> float | None:
        if self.section.preferred_seconds > 0:
            return self.section.preferred_seconds
        seen = [h.seconds for h in self.history.values() if h.seconds is not None]
        return statistics.median(seen) if seen else None

    quality_aware = True

    def utility(
        self, partition: int, server_round: int, deadline: float | None, quality: float = 1.0
    ) -> float:
        silo = self.silo(partition)
        util = (silo.num_examples or 1) * max(silo.loss or 0.0, 0.0) * quality
        if deadline and silo.seconds and silo.seconds > deadline:
            util *= (deadline / silo.seconds) ** self.section.speed_penalty
        if silo.last_selected > 0 and server_round > 1:
            util += math.sqrt(STALENESS * math.log(server_round) / silo.last_selected)
        return util

    def choose(self, server_round, candidates, k, rng) -> Choice:
        tried = [p for p in candidates if self.silo(p).loss is not None]
        new = [p for p in candidates if self.silo(p).loss is None]
        explore = min(len(new), max(k - len(tried), round(self.epsilon(server_round) * k)))
        exploit = k - explore
        deadline = self.preferred_seconds()
        quality = self.quality(tried)
        utils = {p: self.utility(p, server_round, deadline, quality[p]) for p in tried}
        chosen, reasons, scores = [], {}, {}
        if exploit:
            ranked = sorted(tried, key=lambda p: (-utils[p], p))
            cutoff = CUTOFF * utils[ranked[exploit - 1]]
            pool = [p for p in ranked if utils[p] >= cutoff]
            for p in weighted_sample(pool, [utils[p] for p in pool], exploit, rng):
                chosen.append(p)
                scores[p] = utils[p]
                reasons[p] = f"exploit: utility {utils[p]:.4g} (cut-off {cutoff:.4g})" + (
                    f", quality ×{quality[p]:.3g}" if self.contribution else ""
                )
        for p in sorted(rng.choice(new, size=explore, replace=False).tolist()) if explore else []:
            chosen.append(int(p))
            scores[int(p)] = math.nan
            reasons[int(p)] = f"explore: never tried (ε = {self.epsilon(server_round):.3f})"
        return chosen, reasons, scores
