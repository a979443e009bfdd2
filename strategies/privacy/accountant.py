"""Privacy accounting for federated runs, on Opacus' accountants.

Following Opacus' design (``opacus/accountants/``), an accountant is a small object with
``step()`` and ``get_epsilon(delta)``. :class:`FederatedAccountant` wraps Opacus'
:class:`~opacus.accountants.RDPAccountant` (Rényi DP, Mironov 2017; Mironov, Talwar and
Zhang 2019) or :class:`~opacus.accountants.PRVAccountant` (numerical composition of privacy
loss random variables, Gopi, Lee and Wutschitz 2021): no DP math is written here. Both
account for the *Poisson-subsampled Gaussian mechanism*: each step releases a sum of
contributions of sensitivity 1 (after clipping and scaling) plus Gaussian noise of standard
deviation ``noise_multiplier``, each record (a client for central DP, a training row for
local DP-SGD) taking part independently with probability ``sample_rate``.

Opacus' third accountant, ``GaussianAccountant`` (``"gdp"``), is not offered: Opacus itself
warns that it is experimental and *can underestimate* ε (it uses a central-limit
approximation), it requires the noise multiplier and sample rate to stay constant (a
federated run whose number of connected clients changes would make its ``step()`` raise, and
that ``step()`` drops the last history entry before raising), and it has no way to merge
heterogeneous rounds.

The accountant's whole state is its *history*, a list of ``(noise_multiplier, sample_rate,
steps)`` events. It is mechanism-independent (the same events can be accounted with RDP or
PRV) and :meth:`FederatedAccountant.state_dict` stores it as three flat numeric lists, so it
fits a Flower ``ConfigRecord`` or ``MetricRecord`` (e.g. in a ClientApp's
``context.state`` between rounds) and JSON.

:class:`PrivacyBudget` is a target ``(ε, δ)``: :meth:`PrivacyBudget.can_afford_next_round`
computes ε after one more round on a *copy* of the accountant, so a run that checks before
every round never reports an ε above the target. Two ways to use it
(:meth:`PrivacyBudget.plan`):

* ``"calibrate"``: the noise multiplier is chosen up front
  (:func:`calibrate_noise_multiplier`, Opacus' ``get_noise_multiplier``) so that the planned
  number of rounds ends at (just below) the target ε;
* ``"stop"``: the noise multiplier is given; training stops before the round that would
  exceed the target.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier

__all__ = [
    "MECHANISMS",
    "BudgetMode",
    "FederatedAccountant",
    "Mechanism",
    "PrivacyBudget",
    "calibrate_noise_multiplier",
    "check_delta",
    "check_epsilon",
    "check_noise_multiplier",
    "check_sample_rate",
]

Mechanism = Literal["rdp", "prv"]
#: Accounting mechanisms :class:`FederatedAccountant` offers (Opacus' names).
MECHANISMS: tuple[str, ...] = ("rdp", "prv")

BudgetMode = Literal["calibrate", "stop"]
BUDGET_MODES: tuple[str, ...] = ("calibrate", "stop")

_OPACUS: dict[str, type[IAccountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}

#: Keys of :meth:`FederatedAccountant.state_dict`.
STATE_KEYS = ("noise-multiplier", "sample-rate", "steps")


# ------------------------------------------------------------------------------ validation
def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_epsilon(epsilon: object, name: str = "target_epsilon") -> float:
    """``epsilon`` as a float; ``ValueError`` unless it is finite and > 0."""
    if not _is_real(epsilon) or not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(
            f"{name} must be a finite number > 0 (the privacy budget ε); got {epsilon!r}. "
            "Typical values are 1–10; smaller means more private and more noise."
        )
    return float(epsilon)


def check_delta(delta: object, n_records: int | None = None, name: str = "target_delta") -> float:
    """``delta`` as a float; ``ValueError`` unless ``0 < delta < 1`` and, when the number of
    protected records ``n_records`` is known, ``delta < 1 / n_records`` (a δ of 1/n allows
    publishing one whole record outright)."""
    if not _is_real(delta) or not math.isfinite(delta) or not 0 < delta < 1:
        raise ValueError(
            f"{name} must be a number with 0 < δ < 1; got {delta!r}. Use δ well below "
            "1/(number of protected records), e.g. 1e-5."
        )
    if n_records is not None:
        if isinstance(n_records, bool) or not isinstance(n_records, int) or n_records < 1:
            raise ValueError(f"n_records must be a positive integer; got {n_records!r}")
        if delta >= 1.0 / n_records:
            raise ValueError(
                f"{name} = {delta!r} is not below 1/n_records = 1/{n_records} = "
                f"{1.0 / n_records:.3g}: such a δ permits revealing a whole record. Set "
                f"{name} < {1.0 / n_records:.3g}, e.g. {_suggest_delta(n_records):.1e}."
            )
    return float(delta)


def _suggest_delta(n_records: int) -> float:
    return 10.0 ** math.floor(math.log10(1.0 / (10.0 * n_records)))


def check_noise_multiplier(noise_multiplier: object, name: str = "noise_multiplier") -> float:
    """``noise_multiplier`` as a float; ``ValueError`` unless finite and ≥ 0 (0 = no noise,
    no privacy: ε is infinite)."""
    if not _is_real(noise_multiplier) or not math.isfinite(noise_multiplier):
        raise ValueError(f"{name} must be a finite number ≥ 0; got {noise_multiplier!r}")
    if noise_multiplier < 0:
        raise ValueError(
            f"{name} must be ≥ 0 (noise standard deviation / clipping norm); got "
            f"{noise_multiplier!r}. Use e.g. 1.0, or calibrate it from a target ε."
        )
    return float(noise_multiplier)


def check_sample_rate(sample_rate: object, name: str = "sample_rate") -> float:
    """``sample_rate`` as a float; ``ValueError`` unless ``0 < sample_rate ≤ 1``."""
    if not _is_real(sample_rate) or not math.isfinite(sample_rate) or not 0 < sample_rate <= 1:
        raise ValueError(
            f"{name} must be in (0, 1] (probability that a record takes part in a step, "
            f"e.g. sampled clients / total clients); got {sample_rate!r}"
        )
    return float(sample_rate)


def _check_mechanism(mechanism: object) -> str:
    if mechanism == "gdp":
        raise ValueError(
            "mechanism 'gdp' (Opacus' GaussianAccountant) is not supported: Opacus marks it "
            "experimental and it can underestimate ε. Use mechanism='rdp' or 'prv'."
        )
    if mechanism not in _OPACUS:
        raise ValueError(f"mechanism must be one of {', '.join(MECHANISMS)}; got {mechanism!r}")
    return str(mechanism)


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1; got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------ accountant
class FederatedAccountant:
    """Tracks cumulative (ε, δ) of a sequence of subsampled Gaussian releases.

    Parameters
    ----------
    mechanism : {"rdp", "prv"}
        Opacus accountant doing the math: ``"rdp"`` (Rényi DP; fast, slightly loose) or
        ``"prv"`` (PRV accountant; tight upper bound, slower: ~0.2–1 s per ε evaluation).
    noise_multiplier : float
        Default noise multiplier σ of a step (noise std / sensitivity), ≥ 0.
    sample_rate : float
        Default probability in (0, 1] that a protected record takes part in a step.

    One step is one release: a federated round for central DP, an optimiser step for
    DP-SGD. Steps with other parameters are recorded with
    ``step(noise_multiplier=…, sample_rate=…)``.
    """

    def __init__(
        self, mechanism: Mechanism = "rdp", noise_multiplier: float = 1.0, sample_rate: float = 1.0
    ) -> None:
        self.mechanism: str = _check_mechanism(mechanism)
        self.noise_multiplier = check_noise_multiplier(noise_multiplier)
        self.sample_rate = check_sample_rate(sample_rate)
        self._accountant: IAccountant = _OPACUS[self.mechanism]()

    # -- Opacus-style API
    @property
    def opacus_accountant(self) -> IAccountant:
        """The wrapped Opacus accountant (hand it to ``PrivacyEngine`` so its optimiser
        hook steps this accountant)."""
        return self._accountant

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """``(noise_multiplier, sample_rate, steps)`` events, oldest first (a copy)."""
        return [(float(s), float(q), int(n)) for s, q, n in self._accountant.history]

    @property
    def num_steps(self) -> int:
        """Total steps (releases) accounted so far."""
        return sum(n for _, _, n in self._accountant.history)

    def __len__(self) -> int:
        return self.num_steps

    def step(
        self,
        num_steps: int = 1,
        *,
        noise_multiplier: float | None = None,
        sample_rate: float | None = None,
    ) -> None:
        """Record ``num_steps`` releases (default parameters unless overridden)."""
        num_steps = _check_count(num_steps, "num_steps")
        sigma = (
            self.noise_multiplier
            if noise_multiplier is None
            else check_noise_multiplier(noise_multiplier)
        )
        rate = self.sample_rate if sample_rate is None else check_sample_rate(sample_rate)
        history = self._accountant.history
        # Same merge rule as Opacus' RDPAccountant.step, for num_steps at once.
        if history and history[-1][0] == sigma and history[-1][1] == rate:
            history[-1] = (sigma, rate, history[-1][2] + num_steps)
        else:
            history.append((sigma, rate, num_steps))

    def epsilon(self, delta: float) -> float:
        """Cumulative ε at ``delta`` (0 before any step, ``inf`` if a step had no noise)."""
        delta = check_delta(delta, name="delta")
        history = self._accountant.history
        if not history:
            return 0.0
        if any(sigma == 0 for sigma, _, _ in history):
            return math.inf
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            # PRV evaluates log(1 - q), -inf at q = 1 (handled correctly downstream).
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(self._accountant.get_epsilon(delta=delta))

    get_epsilon = epsilon  # Opacus' name

    def epsilon_without_sampling(self, delta: float) -> float:
        """Cumulative ε at ``delta`` for the same steps accounted at sample rate 1: what
        the releases cost against an adversary who knows who took part in each step (no
        amplification by sampling), e.g. one who reads the server's records of cohorts."""
        unsampled = FederatedAccountant(self.mechanism, self.noise_multiplier, 1.0)
        unsampled._accountant.history = [(s, 1.0, n) for s, _, n in self.history]
        return unsampled.epsilon(delta)

    # -- persistence
    def state_dict(self) -> dict[str, list[float] | list[int]]:
        """The history as flat lists ``{"noise-multiplier": [σ…], "sample-rate": [q…],
        "steps": [n…]}``: numbers only, so it fits a ConfigRecord, a MetricRecord or JSON.
        The mechanism is not part of the state: the same events can be accounted by
        either mechanism."""
        history = self.history
        return {
            "noise-multiplier": [s for s, _, _ in history],
            "sample-rate": [q for _, q, _ in history],
            "steps": [n for _, _, n in history],
        }

    def load_state_dict(self, state: Mapping[str, Sequence[float] | Sequence[int]]) -> None:
        """Replace the history by ``state`` (from :meth:`state_dict`, possibly after a trip
        through a ConfigRecord); ``ValueError`` if malformed."""
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            raise ValueError(
                f"accountant state lacks {', '.join(missing)}; expected the keys "
                f"{', '.join(STATE_KEYS)} as written by FederatedAccountant.state_dict()"
            )
        sigmas, rates, steps = (list(state[key]) for key in STATE_KEYS)
        if not len(sigmas) == len(rates) == len(steps):
            raise ValueError(
                "accountant state lists differ in length: "
                f"{len(sigmas)} noise multipliers, {len(rates)} sample rates, {len(steps)} steps"
            )
        history = [
            (
                check_noise_multiplier(s, "noise-multiplier in state"),
                check_sample_rate(q, "sample-rate in state"),
                _check_count(n, "steps in state"),
            )
            for s, q, n in zip(sigmas, rates, steps, strict=True)
        ]
        self._accountant.history = history

    def copy(self) -> FederatedAccountant:
        """An independent copy (stepping it leaves this accountant unchanged)."""
        return copy.deepcopy(self)

    def __repr__(self) -> str:
        return (
            f"FederatedAccountant(mechanism={self.mechanism!r}, "
            f"noise_multiplier={self.noise_multiplier}, sample_rate={self.sample_rate}, "
            f"steps={self.num_steps})"
        )


# ------------------------------------------------------------------------------ calibration
def calibrate_noise_multiplier(
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    rounds: int,
    mechanism: Mechanism = "rdp",
    *,
    steps_per_round: int = 1,
    n_records: int | None = None,
    epsilon_tolerance: float = 0.01,
) -> float:
    """The smallest noise multiplier (to ``epsilon_tolerance``) whose ε after
    ``rounds × steps_per_round`` steps at ``sample_rate`` is at most ``target_epsilon``.

    Uses Opacus' :func:`opacus.accountants.utils.get_noise_multiplier` (binary search); the
    returned σ is re-checked with :class:`FederatedAccountant`, so accounting a run of the
    planned length with it never exceeds ``target_epsilon``.
    """
    target_epsilon = check_epsilon(target_epsilon)
    target_delta = check_delta(target_delta, n_records)
    sample_rate = check_sample_rate(sample_rate)
    rounds = _check_count(rounds, "rounds")
    steps_per_round = _check_count(steps_per_round, "steps_per_round")
    mechanism = _check_mechanism(mechanism)
    if not _is_real(epsilon_tolerance) or not epsilon_tolerance > 0:
        raise ValueError(f"epsilon_tolerance must be > 0; got {epsilon_tolerance!r}")
    steps = rounds * steps_per_round
    try:
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            # The binary search probes σ far from the answer, where RDP's best order is at
            # the edge of Opacus' range; the final σ is re-checked below.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            sigma = float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=target_delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=mechanism,
                    epsilon_tolerance=epsilon_tolerance,
                )
            )
    except ValueError as exc:
        raise ValueError(
            f"cannot reach target_epsilon={target_epsilon} at target_delta={target_delta} "
            f"over {steps} steps at sample_rate={sample_rate} ({exc}); raise target_epsilon "
            "or lower the number of rounds / the sample rate"
        ) from None
    check = FederatedAccountant(mechanism, sigma, sample_rate)
    check.step(steps)
    if check.epsilon(target_delta) > target_epsilon:  # pragma: no cover - Opacus guarantees
        raise RuntimeError(f"calibrated σ={sigma} exceeds target_epsilon={target_epsilon}")
    return sigma


# ------------------------------------------------------------------------------ budget
@dataclass(frozen=True)
class PrivacyBudget:
    """A target (ε, δ) a run must not exceed.

    Parameters
    ----------
    target_epsilon : float
        ε the run may spend in total, > 0.
    target_delta : float
        δ at which ε is reported, in (0, 1) and below ``1 / n_records`` when given.
    n_records : int, optional
        Number of protected records (clients in the federation for central DP, training
        rows of the silo for local DP-SGD), to validate δ.
    """

    target_epsilon: float
    target_delta: float
    n_records: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_epsilon", check_epsilon(self.target_epsilon))
        object.__setattr__(self, "target_delta", check_delta(self.target_delta, self.n_records))

    def spent(self, accountant: FederatedAccountant) -> float:
        """ε spent so far at the budget's δ."""
        return accountant.epsilon(self.target_delta)

    def epsilon_after(
        self,
        accountant: FederatedAccountant,
        num_steps: int = 1,
        *,
        noise_multiplier: float | None = None,
        sample_rate: float | None = None,
    ) -> float:
        """ε at the budget's δ if ``num_steps`` more steps were taken (on a copy)."""
        trial = accountant.copy()
        trial.step(num_steps, noise_multiplier=noise_multiplier, sample_rate=sample_rate)
        return trial.epsilon(self.target_delta)

    def can_afford_next_round(
        self,
        accountant: FederatedAccountant,
        num_steps: int = 1,
        *,
        noise_multiplier: float | None = None,
        sample_rate: float | None = None,
    ) -> bool:
        """True if ``num_steps`` more steps keep ε ≤ ``target_epsilon`` (the accountant
        itself is not changed)."""
        return (
            self.epsilon_after(
                accountant,
                num_steps,
                noise_multiplier=noise_multiplier,
                sample_rate=sample_rate,
            )
            <= self.target_epsilon
        )

    def calibrate(
        self,
        sample_rate: float,
        rounds: int,
        mechanism: Mechanism = "rdp",
        *,
        steps_per_round: int = 1,
    ) -> float:
        """:func:`calibrate_noise_multiplier` for this budget."""
        return calibrate_noise_multiplier(
            self.target_epsilon,
            self.target_delta,
            sample_rate,
            rounds,
            mechanism,
            steps_per_round=steps_per_round,
            n_records=self.n_records,
        )

    def plan(
        self,
        mode: BudgetMode,
        *,
        sample_rate: float,
        rounds: int,
        noise_multiplier: float | None = None,
        mechanism: Mechanism = "rdp",
        steps_per_round: int = 1,
    ) -> float:
        """The noise multiplier for a run under this budget.

        ``"calibrate"``: calibrated so ``rounds`` rounds end at ≤ ``target_epsilon``
        (``noise_multiplier`` must be ``None``). ``"stop"``: ``noise_multiplier`` itself
        (> 0); the run stops before the round that would exceed the budget. In both modes
        the run should check :meth:`can_afford_next_round` before every round (the actual
        sample rate may differ from the planned one).
        """
        if mode == "calibrate":
            if noise_multiplier is not None:
                raise ValueError(
                    "budget mode 'calibrate' chooses the noise multiplier itself; pass "
                    "noise_multiplier=None, or use mode 'stop' to keep the given one"
                )
            return self.calibrate(sample_rate, rounds, mechanism, steps_per_round=steps_per_round)
        if mode == "stop":
            if noise_multiplier is None:
                raise ValueError(
                    "budget mode 'stop' needs a noise_multiplier > 0; pass one, or use mode "
                    "'calibrate' to derive it from the budget"
                )
            sigma = check_noise_multiplier(noise_multiplier)
            if sigma == 0:
                raise ValueError(
                    "noise_multiplier = 0 gives infinite ε, so no round fits a budget; use a "
                    "noise_multiplier > 0"
                )
            check_sample_rate(sample_rate)
            _check_count(rounds, "rounds")
            _check_mechanism(mechanism)
            return sigma
        raise ValueError(f"budget mode must be one of {', '.join(BUDGET_MODES)}; got {mode!r}")
