"""Aggregation of clients' MetricRecords into one round metric per key.

Rules (the same with and without secure aggregation):

* Each metric is the example-weighted mean over the silos that report it with a finite
  value. A silo's NaN/±Inf value is left out of the aggregate, with a warning naming the
  silo; it still reaches that silo's per-silo metrics (``silo_metrics.json``, MLflow) as
  reported. If no silo has a finite value, the key is left out of the round's metrics.
* Privacy metrics (``dp-…``) report the weakest silo, since that is the federation's
  guarantee: the maximum of the privacy losses ``dp-epsilon`` and ``dp-delta``, the minimum
  of ``dp-noise-multiplier`` and of the ``dp-private`` flag, and the maximum of the other
  ``dp-…`` counters. An unknown guarantee is reported as none: a non-finite ``dp-epsilon``
  or ``dp-delta`` makes the round's value +inf, a non-finite ``dp-noise-multiplier`` or
  ``dp-private`` makes it 0 — never the value of the other silos.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from logging import WARNING
from typing import Any

from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.supercore import log

from fl_core.records import META_KEY
from strategies.flatten import records_of

#: Privacy metrics where larger is weaker (non-finite: unbounded loss, +inf).
PRIVACY_LOSS_KEYS = frozenset({"dp-epsilon", "dp-delta"})
#: Privacy metrics where smaller is weaker (non-finite: no protection, 0).
PRIVACY_STRENGTH_KEYS = frozenset({"dp-noise-multiplier", "dp-private"})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def combine_silo_metrics(
    silos: Iterable[tuple[str, Mapping[str, Any]]], weighting_key: str
) -> dict[str, float]:
    """One value per metric from ``(silo label, metrics)`` pairs (rules in the module doc).

    ``weighting_key`` (e.g. ``num-examples``) weights the means and is summed into the
    result; a silo whose weight is missing, negative or non-finite weighs 0.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    weakest: dict[str, float] = {}
    total = 0.0
    for label, metrics in silos:
        raw_weight = metrics.get(weighting_key)
        w = float(raw_weight) if _is_number(raw_weight) else float("nan")
        if not (math.isfinite(w) and w >= 0):
            log(WARNING, "metrics: %s reported %s = %r; its metrics weigh 0 in the round's "
                "means", label, weighting_key, raw_weight)  # fmt: skip
            w = 0.0
        total += w
        bad = []
        for key, value in metrics.items():
            if key == weighting_key or not _is_number(value):
                continue
            value = float(value)
            finite = math.isfinite(value)
            if not finite:
                bad.append(f"{key}={value}")
            if key in PRIVACY_STRENGTH_KEYS:
                weakest[key] = min(weakest.get(key, math.inf), value if finite else 0.0)
            elif key.startswith("dp-"):
                if not finite and key in PRIVACY_LOSS_KEYS:
                    value = math.inf
                elif not finite:
                    continue
                weakest[key] = max(weakest.get(key, -math.inf), value)
            elif finite:
                sums[key] = sums.get(key, 0.0) + w * value
                weights[key] = weights.get(key, 0.0) + w
        if bad:
            log(WARNING, "metrics: %s reported non-finite %s; left out of the round's "
                "aggregate (privacy metrics count as unprotected), kept in its per-silo "
                "metrics", label, ", ".join(bad))  # fmt: skip
    out = {k: sums[k] / weights[k] for k in sums if weights[k] > 0}
    out.update(weakest)
    out[weighting_key] = total
    return out


def silo_label(record: RecordDict, index: int) -> str:
    """``"partition <p>"`` from a reply's meta record, else ``"reply <index>"``."""
    meta = record.get(META_KEY)
    if isinstance(meta, ConfigRecord) and "partition-id" in meta:
        return f"partition {meta['partition-id']}"
    return f"reply {index}"


def weighted_mean_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Flower's ``train_metrics_aggr_fn`` / ``evaluate_metrics_aggr_fn``: the replies'
    MetricRecords combined by :func:`combine_silo_metrics`.

    A silo whose validation split lacks a class reports NaN ROC-AUC; Flower's default
    average would turn the whole round's ROC-AUC into NaN. Here each metric averages over
    the silos that could compute it, and ``dp-…`` metrics take the maximum.
    """
    silos = [
        (silo_label(record, i), metrics[0])
        for i, record in enumerate(records)
        if (metrics := records_of(record, MetricRecord))
    ]
    return MetricRecord(combine_silo_metrics(silos, weighting_key))
