"""Model-poisoning attacks for *simulating* the Byzantine threat model.

This module is a threat-model simulation tool for evaluating the robust aggregators in
:mod:`strategies.robust.rules`; it is not a defense. Every attack is a pure function

    attack(honest_updates, num_byzantine, **params) -> byzantine_updates

where ``honest_updates`` is the ``(h, d)`` stack of honest clients' updates (an omniscient
adversary, as in the cited papers) and the result is an ``(f, d)`` tensor with
``f = num_byzantine``, in the dtype and device of ``honest_updates``. Append it to the honest
stack to obtain the ``(h + f, d)`` input of an aggregation rule.

Randomness comes only from an explicit ``torch.Generator`` argument. Data-poisoning attacks
(e.g. label flipping) act on client data, not on updates, and live with the tasks.

:func:`inflate_claim` attacks the other half of a reply: the ``num-examples`` a silo claims,
which weighted aggregation rules use as its weight (the weight-inflation attack of the
simulation sends :func:`sign_flip` updates with inflated claims).

Adaptive attacks (:data:`ADAPTIVE_ATTACKS`) craft the Byzantine vector *against* the robust
rules: :func:`min_max` and :func:`min_sum` search the largest step along a perturbation that
stays inside the honest updates' own spread; :func:`relocated_orthogonal_perturbation` places
it at the centred-clipping reference point, orthogonal to the reference direction;
:func:`mimic` copies the honest silo that lies furthest along the honest updates' top
principal direction. ROP and Mimic use history (the previous aggregate; a running direction
estimate): the functions take it as arguments and the caller keeps it between rounds
(:class:`MimicTracker` holds Mimic's online estimate).

Contract of every attack here: inputs are validated (finite, 2-D, floating); computation is
in float64; the result is ``(f, d)`` in the dtype and device of ``honest_updates``; all ``f``
rows are equal (every Byzantine silo sends the same vector, as in the papers' code); nothing
is random unless a ``torch.Generator`` is passed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from statistics import NormalDist

import torch

from .checks import check_int, check_positive, check_updates

__all__ = [
    "ADAPTIVE_ATTACKS",
    "ATTACKS",
    "MimicTracker",
    "alie",
    "alie_z",
    "gaussian_noise",
    "inflate_claim",
    "ipm",
    "mimic",
    "mimic_direction_init",
    "mimic_direction_update",
    "mimic_target",
    "min_max",
    "min_sum",
    "perturbation_direction",
    "relocated_orthogonal_perturbation",
    "scaling",
    "sign_flip",
    "top_principal_direction",
]

#: Default factor of :func:`inflate_claim`.
INFLATION_FACTOR = 1000.0


def _prepare(honest_updates: torch.Tensor, num_byzantine: object) -> tuple[torch.Tensor, int]:
    x = check_updates(honest_updates, "honest_updates")
    f = check_int(num_byzantine, "num_byzantine")
    if f < 0:
        raise ValueError(f"num_byzantine must be >= 0; got {f}")
    return x, f


def _repeat(vector: torch.Tensor, f: int, like: torch.Tensor) -> torch.Tensor:
    return vector.to(like.dtype).unsqueeze(0).expand(f, -1).clone()


def _check_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number; got {value!r}")
    return float(value)


def sign_flip(honest_updates: torch.Tensor, num_byzantine: int) -> torch.Tensor:
    """Sign flipping: every Byzantine client sends the negated honest mean ``-mean(honest)``.

    A standard baseline attack (e.g. used in L. Li, W. Xu, T. Chen, G. B. Giannakis, Q. Ling,
    "RSA: Byzantine-Robust Stochastic Aggregation Methods for Distributed Learning from
    Heterogeneous Datasets", AAAI 2019, arXiv:1811.03761). Equals :func:`ipm` with
    ``epsilon = 1``.

    Args:
        honest_updates: ``(h, d)`` honest updates.
        num_byzantine: ``f >= 0``, number of Byzantine updates to produce.

    Returns:
        ``(f, d)`` Byzantine updates.
    """
    x, f = _prepare(honest_updates, num_byzantine)
    return _repeat(-x.to(torch.float64).mean(dim=0), f, x)


def gaussian_noise(
    honest_updates: torch.Tensor,
    num_byzantine: int,
    *,
    std: float = 1.0,
    generator: torch.Generator,
) -> torch.Tensor:
    """Gaussian attack: each Byzantine client sends an independent ``N(0, std^2 I)`` vector.

    Baseline attack from P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer, "Machine
    Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017,
    arXiv:1703.02757.

    Args:
        honest_updates: ``(h, d)`` honest updates (only the shape, dtype and device are used).
        num_byzantine: ``f >= 0``, number of Byzantine updates to produce.
        std: noise standard deviation (> 0).
        generator: explicit, seeded ``torch.Generator`` (required: no global RNG is used).

    Returns:
        ``(f, d)`` Byzantine updates.
    """
    x, f = _prepare(honest_updates, num_byzantine)
    std = check_positive(std, "std")
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            "generator must be a seeded torch.Generator (no global RNG is used); "
            f"got {type(generator).__name__}"
        )
    noise = torch.randn(
        f, x.shape[1], generator=generator, dtype=torch.float64, device=generator.device
    )
    return (std * noise).to(device=x.device, dtype=x.dtype)


def scaling(honest_updates: torch.Tensor, num_byzantine: int, *, factor: float) -> torch.Tensor:
    """Scaling (boosting) attack: each Byzantine client sends ``factor * mean(honest)``.

    Models the boosted updates of model-replacement attacks: E. Bagdasaryan, A. Veit, Y. Hua,
    D. Estrin, V. Shmatikov, "How To Backdoor Federated Learning", AISTATS 2020,
    arXiv:1807.00459.

    Args:
        honest_updates: ``(h, d)`` honest updates.
        num_byzantine: ``f >= 0``, number of Byzantine updates to produce.
        factor: finite scale factor (negative values also flip the direction).

    Returns:
        ``(f, d)`` Byzantine updates.
    """
    x, f = _prepare(honest_updates, num_byzantine)
    factor = _check_real(factor, "factor")
    return _repeat(factor * x.to(torch.float64).mean(dim=0), f, x)


def alie_z(num_clients: int, num_byzantine: int) -> float:
    """The ALIE ``z_max`` for ``n = num_clients`` total clients of which ``f`` are Byzantine.

    ``s = floor(n / 2 + 1) - f`` honest clients must be "won over"; ``z_max`` is the normal
    quantile ``Phi^{-1}((n - s) / n)``. Requires ``0 <= f <= floor(n / 2)`` (so ``s >= 1``).
    """
    n = check_int(num_clients, "num_clients")
    f = check_int(num_byzantine, "num_byzantine")
    s = math.floor(n / 2 + 1) - f
    if n < 1 or f < 0 or s < 1:
        raise ValueError(
            f"num_byzantine={f} is invalid for ALIE with n={n} total clients: it needs "
            f"0 <= num_byzantine <= floor(n/2) = {n // 2}"
        )
    return NormalDist().inv_cdf((n - s) / n)


def alie(
    honest_updates: torch.Tensor, num_byzantine: int, *, z: float | None = None
) -> torch.Tensor:
    """ALIE ("A little is enough"): ``mean - z * std`` of the honest updates, per coordinate.

    Reference: M. Baruch, G. Baruch, Y. Goldberg, "A Little Is Enough: Circumventing Defenses
    For Distributed Learning", NeurIPS 2019, arXiv:1902.06156.

    With ``n = h + f`` total clients, ``z`` defaults to ``z_max = Phi^{-1}((n - s) / n)`` where
    ``s = floor(n / 2 + 1) - f`` (see :func:`alie_z`); this requires ``f <= floor(n / 2)``.
    ``std`` is the coordinate-wise sample standard deviation (population standard deviation if
    ``h = 1``). All Byzantine clients send the same vector.

    Args:
        honest_updates: ``(h, d)`` honest updates.
        num_byzantine: ``f >= 0``, number of Byzantine updates to produce.
        z: override for the number of standard deviations (finite).

    Returns:
        ``(f, d)`` Byzantine updates.
    """
    x, f = _prepare(honest_updates, num_byzantine)
    h = x.shape[0]
    z = alie_z(h + f, f) if z is None else _check_real(z, "z")
    x64 = x.to(torch.float64)
    std = x64.std(dim=0, correction=1 if h > 1 else 0)
    return _repeat(x64.mean(dim=0) - z * std, f, x)


def ipm(honest_updates: torch.Tensor, num_byzantine: int, *, epsilon: float = 0.1) -> torch.Tensor:
    """Inner product manipulation (IPM): each Byzantine client sends ``-epsilon * mean(honest)``.

    Reference: C. Xie, O. Koyejo, I. Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD
    by Inner Product Manipulation", UAI 2019, arXiv:1903.03936. A small ``epsilon`` (default
    0.1) keeps the malicious vectors close to the honest ones while making the inner product of
    the aggregate with the true gradient negative.

    Args:
        honest_updates: ``(h, d)`` honest updates.
        num_byzantine: ``f >= 0``, number of Byzantine updates to produce.
        epsilon: positive finite scale.

    Returns:
        ``(f, d)`` Byzantine updates.
    """
    x, f = _prepare(honest_updates, num_byzantine)
    epsilon = check_positive(epsilon, "epsilon")
    return _repeat(-epsilon * x.to(torch.float64).mean(dim=0), f, x)


def inflate_claim(num_examples: float, factor: float = INFLATION_FACTOR) -> float:
    """Weight inflation: a Byzantine silo claims ``factor`` × its ``num_examples``.

    The claim is the weight of FedAvg and of any rule weighted by it, and the server cannot
    check it. Integer claims stay integers (a plausible-looking count passes validation).

    Args:
        num_examples: the silo's true, finite, non-negative example count.
        factor: finite inflation factor (> 0; default 1000).

    Returns:
        The inflated claim, an ``int`` if ``num_examples`` is one.
    """
    factor = check_positive(factor, "factor")
    count = _check_real(num_examples, "num_examples")
    if count < 0:
        raise ValueError(f"num_examples must be >= 0; got {num_examples!r}")
    if isinstance(num_examples, numbers.Integral):
        return round(count * factor)
    return count * factor


ATTACKS: dict[str, Callable[..., torch.Tensor]] = {
    "sign-flip": sign_flip,
    "gaussian": gaussian_noise,
    "scaling": scaling,
    "alie": alie,
    "ipm": ipm,
}
"""Attack name -> function ``(honest_updates, num_byzantine, **params) -> (f, d) tensor``."""


# --------------------------------------------------------------------------------------------
# Adaptive attacks
# --------------------------------------------------------------------------------------------

#: Perturbation directions of :func:`min_max` / :func:`min_sum` (the authors' ``dev_type``).
DIRECTIONS = ("std", "unit-vec", "sign")
#: Starting γ and stopping tolerance of the authors' γ search (``lamda = 10``, ``1e-5``).
GAMMA_INIT = 10.0
GAMMA_TOL = 1e-5
#: Defaults of :func:`relocated_orthogonal_perturbation` (the authors' ``z_max``, ``lamb``,
#: ``pi`` and ``angle``).
ROP_NORM = 1.0
ROP_REFERENCE_MOMENTUM = 0.9
ROP_RELOCATION = 1.0
ROP_ANGLE = 90.0
#: Rounds of Mimic's online direction estimate before the target silo is fixed.
MIMIC_WARMUP = 1


def perturbation_direction(honest_updates: torch.Tensor, direction: str = "std") -> torch.Tensor:
    """The ``(d,)`` float64 vector ``p`` that :func:`min_max` / :func:`min_sum` subtract:
    the Byzantine update is ``mean - γ p``.

    * ``"std"`` — the coordinate-wise sample standard deviation of the honest updates
      (population if ``h = 1``);
    * ``"unit-vec"`` — ``mean / ||mean||`` (the step goes against the honest mean);
    * ``"sign"`` — ``sign(mean)``.

    These are the "inverse std / inverse unit vector / inverse sign" perturbations of
    Shejwalkar & Houmansadr (NDSS 2021). A zero mean gives a zero ``unit-vec`` direction.
    """
    x = check_updates(honest_updates, "honest_updates").to(torch.float64)
    mean = x.mean(dim=0)
    if direction == "std":
        return x.std(dim=0, correction=1 if x.shape[0] > 1 else 0)
    if direction == "unit-vec":
        norm = torch.linalg.vector_norm(mean)
        return mean / norm if norm > 0 else torch.zeros_like(mean)
    if direction == "sign":
        return torch.sign(mean)
    raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")


def _gamma_search(
    accept: Callable[[float], bool], gamma_init: float, tol: float, max_steps: int = 200
) -> float:
    """The authors' search for the largest accepted γ: start at ``gamma_init``, move by half
    the previous step up after a success and down after a failure, stop when the last
    accepted γ and the candidate differ by at most ``tol``. Returns the last accepted γ
    (0 if none was). Candidates stay below ``2 · gamma_init``."""
    gamma, step, accepted = gamma_init, gamma_init, 0.0
    for _ in range(max_steps):
        if abs(accepted - gamma) <= tol:
            break
        if accept(gamma):
            accepted = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return accepted


def _min_max_or_sum(
    honest_updates: torch.Tensor,
    num_byzantine: int,
    direction: str,
    gamma_init: float,
    tol: float,
    reduce: str,
) -> torch.Tensor:
    x, f = _prepare(honest_updates, num_byzantine)
    gamma_init = check_positive(gamma_init, "gamma_init")
    tol = check_positive(tol, "tol")
    x64 = x.to(torch.float64)
    mean = x64.mean(dim=0)
    p = perturbation_direction(x64, direction)
    pairwise = torch.cdist(x64, x64).square()  # (h, h) squared distances
    if reduce == "max":
        bound = float(pairwise.max())
    else:
        bound = float(pairwise.sum(dim=1).min())

    def accept(gamma: float) -> bool:
        dist = (x64 - (mean - gamma * p)).square().sum(dim=1)
        return float(dist.max() if reduce == "max" else dist.sum()) <= bound

    gamma = _gamma_search(accept, gamma_init, tol)
    return _repeat(mean - gamma * p, f, x)


def min_max(
    honest_updates: torch.Tensor,
    num_byzantine: int,
    *,
    direction: str = "std",
    gamma_init: float = GAMMA_INIT,
    tol: float = GAMMA_TOL,
) -> torch.Tensor:
    """Min-max (AGR-agnostic): ``mean - γ p`` with the largest γ whose distance to *every*
    honest update is at most the largest distance between two honest updates.

    Reference: V. Shejwalkar, A. Houmansadr, "Manipulating the Byzantine: Optimizing Model
    Poisoning Attacks and Defenses for Federated Learning", NDSS 2021 (code:
    github.com/vrt1shjwlkr/NDSS21-Model-Poisoning, ``our_attack_dist``). ``p`` is
    :func:`perturbation_direction`; γ comes from the authors' halving search started at
    ``gamma_init`` (:func:`_gamma_search`), so ``0 <= γ < 2 · gamma_init``: the returned
    vector ``m`` satisfies ``max_i ||x_i - m||² <= max_{i,j} ||x_i - x_j||²``.

    Args:
        honest_updates: ``(h, d)`` honest updates.
        num_byzantine: ``f >= 0``, number of Byzantine updates to produce.
        direction: ``"std"`` (default), ``"unit-vec"`` or ``"sign"``.
        gamma_init: first γ tried (> 0; the authors' 10).
        tol: the search stops when successive γ differ by at most this (> 0).

    Returns:
        ``(f, d)`` Byzantine updates (``f`` copies of ``m``).
    """
    return _min_max_or_sum(honest_updates, num_byzantine, direction, gamma_init, tol, "max")


def min_sum(
    honest_updates: torch.Tensor,
    num_byzantine: int,
    *,
    direction: str = "std",
    gamma_init: float = GAMMA_INIT,
    tol: float = GAMMA_TOL,
) -> torch.Tensor:
    """Min-sum (AGR-agnostic): ``mean - γ p`` with the largest γ whose *sum* of squared
    distances to the honest updates is at most the smallest such sum of an honest update.

    Same reference, direction and γ search as :func:`min_max`; the returned ``m`` satisfies
    ``sum_i ||x_i - m||² <= min_j sum_i ||x_i - x_j||²`` (a tighter bound than min-max's,
    so ``m`` is closer to the mean). Arguments and result as :func:`min_max`.
    """
    return _min_max_or_sum(honest_updates, num_byzantine, direction, gamma_init, tol, "sum")


def _unit(v: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.vector_norm(v)
    return v / norm if norm > 0 else torch.zeros_like(v)


def relocated_orthogonal_perturbation(
    honest_updates: torch.Tensor,
    num_byzantine: int,
    *,
    previous_aggregate: torch.Tensor | None = None,
    norm: float = ROP_NORM,
    reference_momentum: float = ROP_REFERENCE_MOMENTUM,
    relocation: float = ROP_RELOCATION,
    angle: float = ROP_ANGLE,
) -> torch.Tensor:
    """Relocated orthogonal perturbation (ROP), the attack on centred clipping.

    Reference: K. Özfatura, E. Özfatura, A. Küpçü, D. Gündüz, "Byzantines Can Also Learn
    From History: Fall of Centered Clipping in Federated Learning", IEEE TIFS 2024,
    arXiv:2208.09894 (authors' attack ``reloc``). Centred clipping clips each update around
    the previous aggregate ``v`` (its reference point). ROP sends

        ``location + norm · unit(sin(a) · unit(o) + cos(a) · unit(r))``

    with ``mu`` the honest mean, ``r = λ v + (1 - λ) mu`` the attacker's estimate of the
    reference direction (``r = mu`` without a previous aggregate), ``o`` the all-ones vector
    minus its projection on ``r`` (orthogonal to ``r``), ``location = π v + (1 - π) mu``
    (``π = 1``: at the reference point itself, where clipping does not shorten it) and
    ``a = angle`` (90°: orthogonal). ``v = 0`` without a previous aggregate, as in the
    authors' first round. If ``o = 0`` (``d = 1`` or ``r`` parallel to all-ones) only the
    ``cos`` component remains; if both vanish the result is ``location``.

    Args:
        honest_updates: ``(h, d)`` honest updates.
        num_byzantine: ``f >= 0``, number of Byzantine updates to produce.
        previous_aggregate: ``(d,)`` the aggregate of the previous round (the centred-clipping
            reference point), or ``None`` in the first round.
        norm: length of the perturbation (> 0; the authors' ``z_max`` default 1, an absolute
            scale: compare it with the clipping radius of the defence).
        reference_momentum: ``λ`` in ``[0, 1]`` (authors' 0.9).
        relocation: ``π`` in ``[0, 1]`` (authors' 1).
        angle: ``a`` in degrees, finite (authors' 90).

    Returns:
        ``(f, d)`` Byzantine updates.
    """
    x, f = _prepare(honest_updates, num_byzantine)
    norm = check_positive(norm, "norm")
    lam = _check_real(reference_momentum, "reference_momentum")
    pi = _check_real(relocation, "relocation")
    for name, value in (("reference_momentum", lam), ("relocation", pi)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1]; got {value!r}")
    angle = _check_real(angle, "angle")
    x64 = x.to(torch.float64)
    mu = x64.mean(dim=0)
    if previous_aggregate is None:
        v, ref = torch.zeros_like(mu), mu
    else:
        v = check_updates(torch.as_tensor(previous_aggregate).reshape(1, -1), "previous_aggregate")[
            0
        ].to(device=x.device, dtype=torch.float64)
        if v.shape != mu.shape:
            raise ValueError(
                f"previous_aggregate must have shape ({mu.shape[0]},); got {tuple(v.shape)}"
            )
        ref = lam * v + (1.0 - lam) * mu
    ones = torch.ones_like(mu)
    ref_sq = float(ref @ ref)
    ortho = ones - ref * (float(ones @ ref) / ref_sq) if ref_sq > 0 else ones
    rad = math.radians(angle)
    pert = math.sin(rad) * _unit(ortho) + math.cos(rad) * _unit(ref)
    location = pi * v + (1.0 - pi) * mu
    return _repeat(location + norm * _unit(pert), f, x)


def _power_step(centred: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``sum_i <c_i, z> c_i`` normalised (one power-iteration step of ``C^T C``); a zero
    result keeps ``direction``."""
    step = centred.T @ (centred @ direction)
    return _unit(step) if torch.linalg.vector_norm(step) > 0 else direction


def mimic_direction_init(
    honest_updates: torch.Tensor, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mimic's first-round estimate ``(mu, z)``: the honest mean and one power-iteration
    step of the honest covariance from a random Gaussian ``z`` (authors' ``_init_callback``).
    Both are ``(d,)`` float64."""
    x = check_updates(honest_updates, "honest_updates").to(torch.float64)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a seeded torch.Generator; got {type(generator)}")
    mu = x.mean(dim=0)
    z = torch.randn(x.shape[1], generator=generator, dtype=torch.float64,
                    device=generator.device).to(x.device)  # fmt: skip
    return mu, _power_step(x - mu, _unit(z))


def mimic_direction_update(
    honest_updates: torch.Tensor, mean: torch.Tensor, direction: torch.Tensor, rounds: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One online update of Mimic's ``(mu, z)`` after ``t = rounds >= 1`` earlier rounds
    (authors' ``_warmup_callback``): ``mu <- (t mu + mean_t) / (t + 1)``, then
    ``z <- unit((t z + unit(sum_i <x_i - mu, z> (x_i - mu))) / (t + 1))``: a running average
    of power-iteration steps, which tracks the top principal direction of the honest
    updates across rounds at ``O(h d)`` cost per round."""
    x = check_updates(honest_updates, "honest_updates").to(torch.float64)
    t = check_int(rounds, "rounds")
    if t < 1:
        raise ValueError(f"rounds must be >= 1 for an update (use mimic_direction_init); got {t}")
    mu = (t * mean.to(torch.float64) + x.mean(dim=0)) / (t + 1)
    z = direction.to(torch.float64)
    step = _power_step(x - mu, z)
    return mu, _unit((t * z + step) / (t + 1))


def top_principal_direction(honest_updates: torch.Tensor) -> torch.Tensor:
    """The unit ``(d,)`` top right-singular vector of the centred honest updates (exact PCA;
    sign as returned by the SVD). Zero if every update equals the mean."""
    x = check_updates(honest_updates, "honest_updates").to(torch.float64)
    centred = x - x.mean(dim=0)
    if not bool(centred.any()):
        return torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    return torch.linalg.svd(centred, full_matrices=False).Vh[0]


def mimic(
    honest_updates: torch.Tensor,
    num_byzantine: int,
    *,
    direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mimic: every Byzantine silo sends a copy of one honest update, the one furthest along
    ``direction`` (``argmax_i <x_i, z>``; ties: the first).

    Reference: S. P. Karimireddy, L. He, M. Jaggi, "Byzantine-Robust Learning on Heterogeneous
    Datasets via Bucketing", ICLR 2022, arXiv:2006.09365 (code:
    github.com/epfml/byzantine-robust-noniid-optimizer, ``MimicVariantAttacker``). Copying
    a real silo passes every outlier test, yet over-weights that silo's data, pulling the
    aggregate along the direction in which honest silos disagree most (the top principal
    direction under heterogeneity). ``direction=None`` uses the exact
    :func:`top_principal_direction` of this round; the authors' online estimate is
    :func:`mimic_direction_init` / :func:`mimic_direction_update` (kept by
    :class:`MimicTracker`).

    Args:
        honest_updates: ``(h, d)`` honest updates.
        num_byzantine: ``f >= 0``, number of Byzantine updates to produce.
        direction: ``(d,)`` direction ``z``, or ``None`` for this round's top principal one.

    Returns:
        ``(f, d)`` Byzantine updates.
    """
    x, f = _prepare(honest_updates, num_byzantine)
    return _repeat(x[mimic_target(x, direction)].to(torch.float64), f, x)


def mimic_target(honest_updates: torch.Tensor, direction: torch.Tensor | None = None) -> int:
    """The row :func:`mimic` copies: ``argmax_i <x_i, z>`` (first on ties)."""
    x = check_updates(honest_updates, "honest_updates").to(torch.float64)
    z = top_principal_direction(x) if direction is None else direction.to(x.device, torch.float64)
    if z.shape != (x.shape[1],):
        raise ValueError(f"direction must have shape ({x.shape[1]},); got {tuple(z.shape)}")
    scores = x @ z
    return int(torch.nonzero(scores == scores.max())[0, 0])


class MimicTracker:
    """State of Mimic's online heuristic across rounds (kept by the caller, e.g. the
    simulation; the maths is in :func:`mimic_direction_init` / :func:`mimic_direction_update`).

    For the first ``warmup`` rounds the direction estimate is updated and the target is the
    honest silo furthest along it; afterwards the target silo is fixed (authors' code). If the
    fixed target is absent from a round, that round falls back to the furthest silo along the
    last estimate.
    """

    def __init__(self, warmup: int = MIMIC_WARMUP, seed: int = 0) -> None:
        self.warmup = check_int(warmup, "warmup")
        if self.warmup < 1:
            raise ValueError(f"warmup must be >= 1; got {self.warmup}")
        self.seed = seed
        self.rounds = 0
        self.mean: torch.Tensor | None = None
        self.direction: torch.Tensor | None = None
        self.target: object | None = None

    def choose(self, honest_updates: torch.Tensor, ids: list) -> int:
        """The row of ``honest_updates`` (whose silo ids are ``ids``) to copy this round."""
        x = check_updates(honest_updates, "honest_updates")
        if len(ids) != x.shape[0]:
            raise ValueError(f"ids has {len(ids)} entries for {x.shape[0]} honest updates")
        if self.rounds < self.warmup:
            if self.rounds == 0 or self.mean is None or self.direction is None:
                gen = torch.Generator().manual_seed(self.seed)
                self.mean, self.direction = mimic_direction_init(x, generator=gen)
            else:
                self.mean, self.direction = mimic_direction_update(
                    x, self.mean, self.direction, self.rounds
                )
            row = mimic_target(x, self.direction)
            self.target = ids[row]
        elif self.target in ids:
            row = ids.index(self.target)
        else:
            row = mimic_target(x, self.direction)
        self.rounds += 1
        return row


ADAPTIVE_ATTACKS: dict[str, Callable[..., torch.Tensor]] = {
    "min-max": min_max,
    "min-sum": min_sum,
    "rop": relocated_orthogonal_perturbation,
    "mimic": mimic,
}
"""Adaptive attack name -> ``(honest_updates, num_byzantine, **params) -> (f, d)``. ROP and
Mimic read history through keyword arguments (``previous_aggregate``; ``direction``)."""
