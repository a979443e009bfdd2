"""The selection policy contract, its run-config section, the per-silo history and the
fairness guard shared by every policy (see the package doc)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from fl_core.config import Section
from fl_core.errors import ConfigError
from fl_core.registry import Registry
from fl_core.seeding import derive_seed
from strategies.contribution.scores import quality_factors

__all__ = [
    "GUARD",
    "POLICIES",
    "Outcome",
    "Selection",
    "SelectionPolicy",
    "SelectionSection",
    "SiloHistory",
    "make_policy",
    "weighted_sample",
]


class SelectionSection(Section):
    """``selection.*``: which silos train each round (docs/selection.md)."""

    policy: str = Field(
        "random",
        description="Who trains each round: `random` (uniform, Flower's sampling), "
        "`availability` (silos that answered recently and on time; exponential back-off "
        "for failures), `power-of-choice` (the highest recent local loss among d "
        "candidates), `oort` (statistical utility × speed penalty, with exploration).",
    )
    fairness_rounds: int = Field(
        0,
        ge=0,
        le=10_000,
        description="No silo is left out more than this many rounds in a row (it is "
        "selected first in the next round); 0 = no guard.",
    )
    candidates: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="power-of-choice: d, the candidates drawn (∝ examples) before the m "
        "with the highest loss are kept; 0 = 2m.",
    )
    backoff_max: int = Field(
        8,
        ge=1,
        le=1_000,
        description="availability: longest back-off, in rounds, after failures in a row "
        "(1, 2, 4, … rounds, capped here).",
    )
    exploration: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="oort: initial share of slots given to silos never tried (×0.98 a "
        "round, down to 0.2, as in the paper).",
    )
    speed_penalty: float = Field(
        2.0,
        ge=0.0,
        le=10.0,
        description="oort: α of the system penalty (T / t)^α of a silo slower than the "
        "preferred round duration T.",
    )
    preferred_seconds: float = Field(
        0.0,
        ge=0.0,
        le=86_400.0,
        description="oort: the preferred round duration T in seconds; 0 = the median of "
        "the durations seen so far.",
    )
    quality_aware: bool = Field(
        False,
        description="oort, power-of-choice: multiply each silo's loss-based utility by its "
        "contribution quality factor (needs contribution.method), so that a silo whose "
        "high loss comes from bad labels is not preferred.",
    )


@dataclass(frozen=True)
class Outcome:
    """What the server saw of one selected silo in one round."""

    partition: int
    ok: bool  # a valid reply arrived in time
    seconds: float | None = None  # the silo's reported training time
    loss: float | None = None  # its mean training loss
    num_examples: int | None = None


@dataclass
class SiloHistory:
    """What the server remembers of one silo (JSON-able; the policy state)."""

    selected: int = 0  # rounds it was selected in
    answered: int = 0  # rounds it answered in time
    last_selected: int = 0  # last round it was selected in (0 = never)
    last_answered: int = 0
    failures: int = 0  # failures in a row (reset by an answer)
    backoff_until: int = 0  # availability: not selected before this round
    reliability: float = 1.0  # EMA of answered (1) / failed (0), optimistic start
    loss: float | None = None  # last reported training loss
    seconds: float | None = None  # last reported training time
    num_examples: int | None = None


@dataclass(frozen=True)
class Selection:
    """One round's choice: the partitions, and per partition a score and a reason."""

    round: int
    partitions: tuple[int, ...]
    reasons: Mapping[int, str] = field(default_factory=dict)
    scores: Mapping[int, float] = field(default_factory=dict)


Choice = tuple[list[int], dict[int, str], dict[int, float]]

#: How the reason of a silo the fairness guard picked begins.
GUARD = "fairness guard"

#: EMA factor of :attr:`SiloHistory.reliability`.
RELIABILITY_EMA = 0.5


class SelectionPolicy:
    """Picks the round's silos; subclasses implement :meth:`choose`.

    ``select`` applies the fairness guard, then asks :meth:`choose` for the remaining slots;
    ``observe`` records the round's outcomes. Both update :attr:`history`, which with the
    round counter is the whole state (:meth:`state_dict`)."""

    #: The registered name (set by :func:`make_policy`); checkpoints record it.
    name: str = ""
    #: True if the policy picks exactly what Flower's seeded uniform sampling picks (the
    #: app then leaves the sampling to Flower and only records the choice).
    uniform: ClassVar[bool] = False
    #: True if the policy ranks silos by a utility that ``selection.quality-aware`` scales
    #: by the silos' contribution quality factors (:meth:`quality`).
    quality_aware: ClassVar[bool] = False

    def __init__(self, section: SelectionSection, seed: int) -> None:
        self.section = section
        self.seed = seed
        self.history: dict[int, SiloHistory] = {}
        self.contribution: Callable[[int], float | None] | None = None
        self.quality_floor = 1.0

    def use_contribution(self, score: Callable[[int], float | None], floor: float) -> None:
        """Scale the policy's utilities by quality factors from ``score(partition)``, the
        silo's running contribution score (``None`` = not scored yet; kept, and
        checkpointed, by the contribution layer), floored at ``floor``."""
        self.contribution, self.quality_floor = score, floor

    def quality(self, candidates: Sequence[int]) -> dict[int, float]:
        """Each candidate's quality factor relative to the others
        (:func:`strategies.contribution.scores.quality_factors`); all 1 without scores."""
        if self.contribution is None:
            return dict.fromkeys(candidates, 1.0)
        scores = [self.contribution(p) for p in candidates]
        return dict(zip(candidates, quality_factors(scores, floor=self.quality_floor), strict=True))

    # ------------------------------------------------------------------ the contract
    def choose(
        self, server_round: int, candidates: Sequence[int], k: int, rng: np.random.Generator
    ) -> Choice:
        """``k`` of ``candidates`` (partition ids, ascending), with a reason and a score for
        each chosen one; ``rng`` is seeded by (seed, round)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared logic
    def silo(self, partition: int) -> SiloHistory:
        """The history of ``partition`` (created empty on first use)."""
        return self.history.setdefault(int(partition), SiloHistory())

    def left_out(self, partition: int, server_round: int) -> int:
        """Rounds in a row before ``server_round`` that ``partition`` was not selected."""
        return server_round - 1 - self.silo(partition).last_selected

    def select(self, server_round: int, partitions: Sequence[int], m: int) -> Selection:
        """``m`` of ``partitions``: first the silos the fairness guard owes a round, then the
        policy's choice among the rest."""
        partitions = sorted(int(p) for p in partitions)
        m = min(m, len(partitions))
        owed = self.owed(server_round, partitions, m)
        guard = self.section.fairness_rounds
        reasons = {
            p: f"{GUARD}: left out {self.left_out(p, server_round)} rounds in a row, "
            f"due by round {self.silo(p).last_selected + guard + 1} "
            f"(selection.fairness-rounds={guard})"
            for p in owed
        }
        scores: dict[int, float] = {p: math.nan for p in owed}
        rest = [p for p in partitions if p not in reasons]
        rng = np.random.default_rng(derive_seed(self.seed, "selection", server_round))
        chosen, why, score = self.choose(server_round, rest, m - len(owed), rng)
        if len(chosen) != m - len(owed) or len(set(chosen)) != len(chosen):
            raise RuntimeError(
                f"selection policy '{self.name}' chose {chosen} for {m - len(owed)} slots "
                f"among {rest}"
            )
        reasons.update(why)
        scores.update(score)
        picked = tuple(sorted([*owed, *chosen]))
        self.record_selected(server_round, picked)
        return Selection(server_round, picked, reasons, scores)

    def owed(self, server_round: int, partitions: Sequence[int], m: int) -> list[int]:
        """The silos the fairness guard selects now (earliest deadline first).

        A silo last selected in round L must train again by round L + K + 1 (K =
        ``selection.fairness-rounds``). Forcing only the silos due now could be too late:
        if more than j·m silos are due within the next j rounds, some would miss their
        round. So the guard takes the largest shortfall over the next K + 1 rounds, max_j
        (due by round r + j) − j·m, and selects that many, earliest deadlines first. With N
        ≤ (K + 1)·m silos this keeps every silo within K rounds out, whatever the policy
        does with the other slots (tested)."""
        guard = self.section.fairness_rounds
        if not guard or not m:
            return []
        due = sorted(
            partitions, key=lambda p: (self.silo(p).last_selected, p)
        )  # earliest deadline last_selected + K + 1 first
        deadlines = [self.silo(p).last_selected + guard + 1 for p in due]
        need = 0
        for j in range(guard + 1):
            count = sum(d <= server_round + j for d in deadlines)
            need = max(need, count - j * m)
        return due[: min(need, m)]

    def record_selected(self, server_round: int, partitions: Sequence[int]) -> None:
        """Mark ``partitions`` as selected in ``server_round``."""
        for p in partitions:
            silo = self.silo(p)
            silo.selected += 1
            silo.last_selected = server_round

    def observe(self, server_round: int, outcomes: Sequence[Outcome]) -> None:
        """Record the round's outcomes (answers, failures, losses, durations)."""
        for out in outcomes:
            silo = self.silo(out.partition)
            silo.reliability = (1 - RELIABILITY_EMA) * silo.reliability + RELIABILITY_EMA * (
                1.0 if out.ok else 0.0
            )
            if out.ok:
                silo.answered += 1
                silo.last_answered = server_round
                silo.failures = 0
                silo.backoff_until = 0
                if out.loss is not None and math.isfinite(out.loss):
                    silo.loss = float(out.loss)
                if out.seconds is not None and math.isfinite(out.seconds):
                    silo.seconds = float(out.seconds)
                if out.num_examples is not None:
                    silo.num_examples = int(out.num_examples)
            else:
                silo.failures += 1
                wait = min(2 ** (silo.failures - 1), self.section.backoff_max)
                silo.backoff_until = server_round + wait + 1

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The policy's whole state, plain data."""
        return {"policy": self.name, "history": {p: asdict(h) for p, h in self.history.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if state.get("policy") != self.name:
            raise ValueError(
                f"checkpoint holds the state of selection policy '{state.get('policy')}', "
                f"this run uses '{self.name}' (selection.policy)"
            )
        self.history = {int(p): SiloHistory(**h) for p, h in state["history"].items()}


def weighted_sample(
    items: Sequence[int], weights: Sequence[float], k: int, rng: np.random.Generator
) -> list[int]:
    """``k`` of ``items`` without replacement, each draw ∝ its weight (Efraimidis–Spirakis
    keys u^(1/w)); zero weights come last, in random order."""
    if k <= 0 or not items:
        return []
    w = np.asarray(weights, dtype=np.float64)
    u = rng.random(len(items))
    keys = np.full(len(items), -np.inf)
    positive = w > 0
    keys[positive] = np.log(u[positive]) / w[positive]
    # zero weights (key -inf) are ordered among themselves by u
    order = sorted(range(len(items)), key=lambda i: (-keys[i], -u[i]))
    return [int(items[i]) for i in order[:k]]


POLICIES: Registry[type[SelectionPolicy]] = Registry(
    "selection policy",
    group="fedsilo.selection",
    builtins=("strategies.selection.policies",),
    sort=True,
)
"""Selection policies (classes taking ``(SelectionSection, seed)``), by name."""


def make_policy(section: SelectionSection, seed: int) -> SelectionPolicy:
    """The policy ``selection.policy`` names, built for this run."""
    cls = POLICIES.for_config(section.policy, key="selection.policy", value=section.policy)
    if not (isinstance(cls, type) and issubclass(cls, SelectionPolicy)):
        raise ConfigError(
            f"selection.policy = '{section.policy}' is registered as {cls!r}, which is not a "
            "SelectionPolicy subclass"
        )
    policy = cls(section, seed)
    policy.name = section.policy  # type: ignore[misc]
    return policy
