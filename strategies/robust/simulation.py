"""Attack simulation — a threat-model tool, not a feature of a production federation.

A seeded ``attack.fraction`` of the silos is Byzantine (:func:`byzantine_partitions`).
Data poisoning (``label-flip``) happens in those silos' ClientApps. Model poisoning
(sign-flip, Gaussian, scaling, ALIE, IPM) is simulated on the server side of the
simulation by :class:`SimulatedAttack`, which replaces the Byzantine silos' updates
before validation and aggregation: ALIE and IPM need the honest updates of the round,
i.e. an omniscient adversary, which only the server side of a simulation can play.
``weight-inflation`` sends sign-flipped updates and also multiplies the silos' claimed
``num-examples`` by ``attack.strength`` (default 1000): it attacks every rule that
weights updates by what the silos claim. The adaptive attacks (min-max, min-sum, ``rop``,
``mimic``; :data:`attacks.ADAPTIVE_ATTACKS`) are simulated the same way; ``rop`` reads the
previous round's aggregate (the change of the global model) and ``mimic`` its online
direction estimate (:class:`attacks.MimicTracker`), both kept here.
"""

from __future__ import annotations

import contextlib
import math
from logging import INFO
from typing import Literal

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log
from pydantic import Field

from fl_core.config import Section
from strategies.flatten import Layout, flatten, stack, unflatten
from strategies.robust import attacks
from strategies.wrappers import StrategyWrapper, reply_order_key

MODEL_ATTACKS = (
    "sign-flip", "gaussian", "scaling", "alie", "ipm", "weight-inflation",
    *attacks.ADAPTIVE_ATTACKS,
)  # fmt: skip


class AttackSection(Section):
    """Attack simulation, a threat-model tool: a seeded share of the silos is Byzantine."""

    kind: Literal[
        "none",
        "sign-flip",
        "gaussian",
        "scaling",
        "label-flip",
        "alie",
        "ipm",
        "weight-inflation",
        "min-max",
        "min-sum",
        "rop",
        "mimic",
    ] = Field("none", description="Simulated Byzantine behaviour of `attack.fraction` silos.")
    fraction: float = Field(
        0.2, ge=0, lt=0.5, description="Fraction of silos that are Byzantine when attacking."
    )
    strength: float = Field(
        0.0,
        description="Attack parameter (0 = its default): scaling factor 10 (negative flips "
        "the direction), noise std 1, IPM ε 0.1, ALIE z from n and f, weight-inflation's "
        "factor on the claimed `num-examples` 1000, min-max/min-sum's first γ 10, ROP's "
        "perturbation norm 1, Mimic's warm-up rounds 1.",
    )


#: The key of a train reply's MetricRecord that FedAvg and weighted rules use as the weight.
WEIGHT_KEY = "num-examples"


def byzantine_partitions(num_partitions: int, fraction: float, seed: int) -> frozenset[int]:
    """The seeded set of ``round(fraction · n)`` Byzantine partition ids (same on the
    server and in every ClientApp)."""
    count = round(fraction * num_partitions)
    rng = np.random.default_rng([seed, 0xB1A5])
    return frozenset(int(p) for p in rng.choice(num_partitions, size=count, replace=False))


def byzantine_updates(
    attack: str,
    honest: torch.Tensor,
    f: int,
    *,
    strength: float,
    generator: torch.Generator,
    previous_aggregate: torch.Tensor | None = None,
    mimic_row: int | None = None,
) -> torch.Tensor:
    """``f`` Byzantine deltas crafted from the honest deltas of the round (``rop`` also
    from the previous aggregate; ``mimic`` copies row ``mimic_row``, default: the top
    principal direction's furthest row)."""
    if attack in ("min-max", "min-sum"):
        return attacks.ADAPTIVE_ATTACKS[attack](
            honest, f, gamma_init=strength or attacks.GAMMA_INIT
        )
    if attack == "rop":
        return attacks.relocated_orthogonal_perturbation(
            honest, f, previous_aggregate=previous_aggregate, norm=strength or attacks.ROP_NORM
        )
    if attack == "mimic":
        row = attacks.mimic_target(honest) if mimic_row is None else mimic_row
        return honest[row].unsqueeze(0).expand(f, -1).clone()
    if attack in ("sign-flip", "weight-inflation"):
        return attacks.sign_flip(honest, f)
    if attack == "gaussian":
        return attacks.gaussian_noise(honest, f, std=strength or 1.0, generator=generator)
    if attack == "scaling":
        return attacks.scaling(honest, f, factor=strength or 10.0)
    if attack == "alie":
        return attacks.alie(honest, f, z=strength or None)
    if attack == "ipm":
        return attacks.ipm(honest, f, epsilon=strength or 0.1)
    raise ValueError(f"'{attack}' is not a model-poisoning attack; use one of {MODEL_ATTACKS}")


class SimulatedAttack(StrategyWrapper):
    """Replaces the Byzantine silos' train replies with crafted updates, and under
    ``weight-inflation`` their claimed ``num-examples`` too (see module doc)."""

    def __init__(
        self,
        inner: Strategy,
        attack: str,
        byzantine: frozenset[int],
        *,
        strength: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(inner)
        self.attack = attack
        self.byzantine = byzantine
        self.strength = strength
        self.seed = seed
        if attack == "weight-inflation" and not (
            math.isfinite(strength) and strength >= 0
        ):  # refused before round 1
            raise ValueError(
                f"run-config 'attack.strength' = {strength!r} is not a weight-inflation "
                "factor: use a finite factor > 0 (0 = the default, 1000), e.g. "
                "attack.strength=1000"
            )
        self._global = None
        self._previous_reference = None  # flat global model of the previous round (rop)
        self._previous_aggregate = None
        self._mimic = (
            attacks.MimicTracker(max(1, round(strength)) if strength else attacks.MIMIC_WARMUP,
                                 seed=seed)
            if attack == "mimic" else None
        )  # fmt: skip

    def configure_train(self, server_round, arrays, config, grid):
        self._global = arrays
        if self.attack == "rop":  # the last aggregate = the change of the global model
            reference = flatten(arrays, Layout.of(arrays))
            last = self._previous_reference
            if last is not None and last.shape == reference.shape:
                self._previous_aggregate = reference - last
            self._previous_reference = reference
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        bad = [m for m in ok if reply_order_key(m)[0] in self.byzantine]
        honest = [m for m in ok if reply_order_key(m)[0] not in self.byzantine]
        if bad and honest and self._global is not None:
            layout = Layout.of(self._global)
            reference = flatten(self._global, layout)
            deltas, _ = stack(
                [next(iter(m.content.array_records.values())) for m in honest], layout
            )
            deltas -= reference
            ids = [reply_order_key(m)[0] for m in honest]
            # The adversary crafts from the honest updates validation will accept: a silo
            # whose training diverged (NaN/Inf, e.g. after FedAvg followed the attack) is
            # rejected there, and would poison every crafted vector here.
            finite = torch.isfinite(deltas).all(dim=1)
            deltas = deltas[finite]
            ids = [i for i, ok in zip(ids, finite.tolist(), strict=True) if ok]
            if len(deltas) == 0:
                log(INFO, "round %d: no finite honest update to craft %s from", server_round,
                    self.attack)  # fmt: skip
                return self.inner.aggregate_train(server_round, replies)
            generator = torch.Generator().manual_seed(self.seed * 7919 + server_round)
            crafted = byzantine_updates(
                self.attack,
                deltas,
                len(bad),
                strength=self.strength,
                generator=generator,
                previous_aggregate=self._previous_aggregate,
                mimic_row=self._mimic.choose(deltas, ids) if self._mimic else None,
            )
            for msg, delta in zip(bad, crafted, strict=True):
                key = next(iter(msg.content.array_records.keys()))
                msg.content[key] = unflatten(reference + delta, layout)
                if self.attack == "weight-inflation":
                    self._inflate(msg)
            log(
                INFO,
                "round %d: simulated %s attack by partitions %s",
                server_round,
                self.attack,
                sorted(reply_order_key(m)[0] for m in bad),
            )
        return self.inner.aggregate_train(server_round, replies)

    def _inflate(self, msg) -> None:
        """Multiply the reply's claimed ``num-examples`` by the inflation factor."""
        metrics = next(iter(msg.content.metric_records.values()), None)
        if metrics is None or WEIGHT_KEY not in metrics:
            return
        with contextlib.suppress(ValueError):  # a malformed claim: validation rejects it
            metrics[WEIGHT_KEY] = attacks.inflate_claim(
                metrics[WEIGHT_KEY], self.strength or attacks.INFLATION_FACTOR
            )
