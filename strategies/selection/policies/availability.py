"""``availability``: silos that answered recently and on time, failures backed off."""

from __future__ import annotations

from strategies.selection.base import POLICIES, Choice, SelectionPolicy, weighted_sample


@POLICIES.register("availability", family="system")
class Availability(SelectionPolicy):
    """Drawn ∝ reliability, an EMA (factor 0.5) of answered-in-time (1) and failed or
    timed-out (0), starting at 1 for a silo never tried. After k failures in a row a silo
    sits out 2^(k−1) rounds (at most ``selection.backoff-max``); if too few silos are out of
    back-off, those whose back-off ends first fill the slots."""

    def choose(self, server_round, candidates, k, rng) -> Choice:
        ready = [p for p in candidates if self.silo(p).backoff_until <= server_round]
        waiting = sorted(
            (p for p in candidates if p not in ready),
            key=lambda p: (self.silo(p).backoff_until, p),
        )
        weights = [max(self.silo(p).reliability, 1e-3) for p in ready]
        chosen = weighted_sample(ready, weights, k, rng)
        chosen += waiting[: k - len(chosen)]
        reasons, scores = {}, {}
        for p in chosen:
            silo = self.silo(p)
            scores[p] = silo.reliability
            if silo.backoff_until > server_round:
                reasons[p] = (
                    f"in back-off until round {silo.backoff_until} ({silo.failures} failures "
                    "in a row) but needed to fill the round"
                )
            else:
                reasons[p] = f"reliability {silo.reliability:.3f}"
        return chosen, reasons, scores
