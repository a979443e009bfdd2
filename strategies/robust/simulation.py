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
from collections.abc import Callable
from logging import INFO

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log
from pydantic import Field, field_validator

from fl_core.config import Section, one_of
from fl_core.registry import Registry
from strategies.flatten import Layout, flatten, stack, unflatten
from strategies.robust import attacks
from strategies.round_state import RoundState
from strategies.wrappers import StrategyWrapper, reply_order_key


class AttackSection(Section):
    """Attack simulation, a threat-model tool: a seeded share of the silos is Byzantine."""

    kind: str = Field(
        "none",
        description="Simulated Byzantine behaviour of `attack.fraction` silos: 'none' or a "
        "registered attack (model poisoning simulated on the server, or 'label-flip' in the "
        "silos; see `ATTACKS` in strategies/robust/simulation.py).",
    )
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

    @field_validator("kind")
    @classmethod
    def _known_attack(cls, value: str) -> str:
        return one_of("attack.kind", value, ["none", *ATTACKS.names()])


#: The key of a train reply's MetricRecord that FedAvg and weighted rules use as the weight.
WEIGHT_KEY = "num-examples"


def byzantine_partitions(num_partitions: int, fraction: float, seed: int) -> frozenset[int]:
    """The seeded set of ``round(fraction · n)`` Byzantine partition ids (same on the
    server and in every ClientApp)."""
    count = round(fraction * num_partitions)
    rng = np.random.default_rng([seed, 0xB1A5])
    return frozenset(int(p) for p in rng.choice(num_partitions, size=count, replace=False))


#: Simulated attack name → its crafting function. ``family="model"``: model poisoning,
#: simulated on the server on the round's individual updates (the function takes the honest
#: deltas ``(n, d)``, ``f`` and keyword arguments ``strength`` (0 = its default),
#: ``generator``, ``previous_aggregate`` and ``mimic_row``, and returns ``f`` Byzantine
#: deltas); ``family="data"``: data poisoning in the Byzantine silos' ClientApps. A
#: separate package adds one through the entry-point group ``fedsilo.attacks``. The
#: secure-aggregation check and the server-side wrapper ask ``ATTACKS.names(family=…)``.
ATTACKS: Registry[Callable[..., torch.Tensor]] = Registry("attack", group="fedsilo.attacks")


def model_attacks() -> list[str]:
    """Names of the attacks simulated on the server (model poisoning)."""
    return ATTACKS.names(family="model")


@ATTACKS.register("sign-flip", family="model")
def _sign_flip(honest, f, *, strength, generator, previous_aggregate, mimic_row):
    """Sign flip: −(mean of the honest updates)."""
    return attacks.sign_flip(honest, f)


@ATTACKS.register("gaussian", family="model")
def _gaussian(honest, f, *, strength, generator, previous_aggregate, mimic_row):
    """Gaussian noise of std ``strength`` (default 1)."""
    return attacks.gaussian_noise(honest, f, std=strength or 1.0, generator=generator)


@ATTACKS.register("scaling", family="model")
def _scaling(honest, f, *, strength, generator, previous_aggregate, mimic_row):
    """The honest mean scaled by ``strength`` (default 10; negative flips it)."""
    return attacks.scaling(honest, f, factor=strength or 10.0)


@ATTACKS.register("alie", family="model")
def _alie(honest, f, *, strength, generator, previous_aggregate, mimic_row):
    """A little is enough (Baruch et al., 2019): z from n and f unless ``strength``."""
    return attacks.alie(honest, f, z=strength or None)


@ATTACKS.register("ipm", family="model")
def _ipm(honest, f, *, strength, generator, previous_aggregate, mimic_row):
    """Inner-product manipulation (Xie et al., 2020), ε = ``strength`` (default 0.1)."""
    return attacks.ipm(honest, f, epsilon=strength or 0.1)


@ATTACKS.register("weight-inflation", family="model", inflates_claims=True)
def _weight_inflation(honest, f, *, strength, generator, previous_aggregate, mimic_row):
    """Sign-flipped updates whose claimed ``num-examples`` is multiplied by ``strength``
    (default 1000): attacks every rule that weights by claims."""
    return attacks.sign_flip(honest, f)


@ATTACKS.register("min-max", family="model", adaptive=True)
def _min_max(honest, f, *, strength, generator, previous_aggregate, mimic_row):
    """Min-max (Shejwalkar & Houmansadr, 2021), first γ = ``strength`` (default 10)."""
    return attacks.min_max(honest, f, gamma_init=strength or attacks.GAMMA_INIT)


@ATTACKS.register("min-sum", family="model", adaptive=True)
def _min_sum(honest, f, *, strength, generator, previous_aggregate, mimic_row):
    """Min-sum (Shejwalkar & Houmansadr, 2021), first γ = ``strength`` (default 10)."""
    return attacks.min_sum(honest, f, gamma_init=strength or attacks.GAMMA_INIT)


@ATTACKS.register("rop", family="model", adaptive=True, reads_previous_aggregate=True)
def _rop(honest, f, *, strength, generator, previous_aggregate, mimic_row):
    """Relocated orthogonal perturbation, norm ``strength`` (default 1)."""
    return attacks.relocated_orthogonal_perturbation(
        honest, f, previous_aggregate=previous_aggregate, norm=strength or attacks.ROP_NORM
    )


@ATTACKS.register("mimic", family="model", adaptive=True, tracks_direction=True)
def _mimic(honest, f, *, strength, generator, previous_aggregate, mimic_row):
    """Mimic (Karimireddy et al., 2022): every Byzantine silo copies one honest silo."""
    row = attacks.mimic_target(honest) if mimic_row is None else mimic_row
    return honest[row].unsqueeze(0).expand(f, -1).clone()


@ATTACKS.register("label-flip", family="data")
def _label_flip(*_args, **_kwargs):
    """Data poisoning: the Byzantine silos train on flipped labels (in their ClientApps)."""
    raise ValueError("'label-flip' poisons data in the silos' ClientApps, not updates")


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
    if attack not in model_attacks():
        raise ValueError(
            f"'{attack}' is not a model-poisoning attack; use one of {model_attacks()}"
        )
    return ATTACKS[attack](
        honest,
        f,
        strength=strength,
        generator=generator,
        previous_aggregate=previous_aggregate,
        mimic_row=mimic_row,
    )


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
        round_state: RoundState | None = None,
    ) -> None:
        super().__init__(inner, round_state=round_state)
        self.attack = attack
        self.byzantine = byzantine
        self.strength = strength
        self.seed = seed
        meta = ATTACKS.get(attack).extra
        self.inflates_claims = bool(meta.get("inflates_claims"))
        self.reads_previous_aggregate = bool(meta.get("reads_previous_aggregate"))
        if self.inflates_claims and not (
            math.isfinite(strength) and strength >= 0
        ):  # refused before round 1
            raise ValueError(
                f"run-config 'attack.strength' = {strength!r} is not a weight-inflation "
                "factor: use a finite factor > 0 (0 = the default, 1000), e.g. "
                "attack.strength=1000"
            )
        self._previous_reference = None  # flat global model of the previous round (rop)
        self._previous_aggregate = None
        self._mimic = (
            attacks.MimicTracker(max(1, round(strength)) if strength else attacks.MIMIC_WARMUP,
                                 seed=seed)
            if meta.get("tracks_direction") else None
        )  # fmt: skip

    def own_state(self):
        """ROP's previous global model and aggregate; Mimic's tracker (see module doc)."""
        state = {
            "previous-reference": self._previous_reference,
            "previous-aggregate": self._previous_aggregate,
        }
        if self._mimic is not None:
            mimic = self._mimic
            state["mimic"] = {"rounds": mimic.rounds, "mean": mimic.mean,
                              "direction": mimic.direction, "target": mimic.target}  # fmt: skip
        return state

    def load_own_state(self, state):
        # Keys absent from checkpoints written before this state was kept: nothing to restore.
        self._previous_reference = state.get("previous-reference")
        self._previous_aggregate = state.get("previous-aggregate")
        if self._mimic is not None and (mimic := state.get("mimic")) is not None:
            self._mimic.rounds = int(mimic["rounds"])
            self._mimic.mean, self._mimic.direction = mimic["mean"], mimic["direction"]
            self._mimic.target = mimic["target"]

    def configure_train(self, server_round, arrays, config, grid):
        self.begin_round(server_round, "train", arrays)
        if self.reads_previous_aggregate:  # the last aggregate = the global model's change
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
        current = self.round.arrays
        if bad and honest and current is not None:
            layout = Layout.of(current)
            reference = flatten(current, layout)
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
                if self.inflates_claims:
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
