"""How evenly the global model serves the silos: a summary of one metric across silos.

Every round's client-side evaluation gives one value per silo (its own validation split).
:func:`fairness_summary` condenses them into the worst silo (``min``), the 10th
percentile (``p10``), the ``median``, the unweighted ``mean``, the population standard
deviation (``std``, ddof = 0) and Jain's fairness index

    J = (Σ xᵢ)² / (n · Σ xᵢ²),

which is 1 when every silo has the same value and 1/n when one silo has everything and
the others 0 (Jain, Chiu & Hawe, 1984). J is defined for non-negative values (metrics
such as accuracy or F1); all-zero values count as equal, J = 1; any negative value
makes J NaN. ``p10`` and ``median`` interpolate linearly between silos (NumPy's default).

:func:`silo_fairness_metrics` names them as round metrics, ``silo-<metric>-<stat>``
(e.g. ``silo-accuracy-jain``), over the silos that reported a finite value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

#: Prefix of the round metrics :func:`silo_fairness_metrics` adds.
FAIRNESS_PREFIX = "silo-"
#: The statistics of :func:`fairness_summary`, in the order they are reported.
FAIRNESS_STATS = ("min", "p10", "median", "mean", "std", "jain", "silos")


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index of non-negative ``values`` (see module doc)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("Jain's index of no values is undefined")
    if np.any(x < 0):
        return math.nan
    squares = float(np.sum(x * x))
    if squares == 0.0:  # every silo at 0: all equal
        return 1.0
    return float(np.sum(x)) ** 2 / (x.size * squares)


def fairness_summary(values: Sequence[float]) -> dict[str, float]:
    """``min``, ``p10``, ``median``, ``mean``, ``std`` (ddof 0), ``jain`` and the number of
    values (``silos``) of ``values`` (one per silo; at least one)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("fairness_summary needs at least one value")
    return {
        "min": float(x.min()),
        "p10": float(np.percentile(x, 10)),
        "median": float(np.median(x)),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "jain": jain_index(x),
        "silos": float(x.size),
    }


def fairness_key(metric: str, stat: str) -> str:
    """The round metric of ``stat`` over the silos' ``metric``: ``silo-<metric>-<stat>``."""
    return f"{FAIRNESS_PREFIX}{metric}-{stat}"


def silo_fairness_metrics(
    silos: Iterable[Mapping[str, float]], metrics: Sequence[str]
) -> dict[str, float]:
    """For each name in ``metrics``, :func:`fairness_summary` of the finite values the
    silos report under it, as ``silo-<metric>-<stat>``; a metric no silo reports finitely
    is left out."""
    silos = list(silos)
    out: dict[str, float] = {}
    for metric in metrics:
        values = [
            float(v)
            for s in silos
            if isinstance(v := s.get(metric), int | float) and math.isfinite(v)
        ]
        if values:
            out.update({fairness_key(metric, k): v for k, v in fairness_summary(values).items()})
    return out


def _parse(key: str) -> tuple[str, str] | None:
    """``(metric, stat)`` of a key named by :func:`fairness_key`, else ``None``."""
    if not key.startswith(FAIRNESS_PREFIX):
        return None
    metric, _, stat = key[len(FAIRNESS_PREFIX) :].rpartition("-")
    return (metric, stat) if metric and stat in FAIRNESS_STATS else None


def is_fairness_key(key: str) -> bool:
    """Whether ``key`` is a round metric :func:`silo_fairness_metrics` names."""
    return _parse(key) is not None


def summaries_in(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """The fairness summaries among a round's ``metrics``, by metric:
    ``{"accuracy": {"min": …, "p10": …, …}}`` (the inverse of the naming of
    :func:`silo_fairness_metrics`)."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if (parsed := _parse(key)) is not None:
            out.setdefault(parsed[0], {})[parsed[1]] = value
    return out
