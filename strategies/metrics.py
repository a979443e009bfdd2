"""Aggregation of clients' MetricRecords."""

from __future__ import annotations

import math

from flwr.app import MetricRecord, RecordDict


def weighted_mean_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Example-weighted mean of every scalar metric, ignoring NaN per metric.

    A silo whose validation split lacks a class reports NaN ROC-AUC; Flower's default
    average would turn the whole round's ROC-AUC into NaN. Here each metric averages over
    the silos that could compute it (NaN only if none could). Privacy metrics (``dp-…``,
    e.g. a silo's cumulative ``dp-epsilon``) take the maximum over silos instead: the
    guarantee of the federation is its weakest silo's.
    """
    sums: dict[str, float] = {}
    maxima: dict[str, float] = {}
    weights: dict[str, float] = {}
    total = 0.0
    for record in records:
        metrics = next(iter(record.metric_records.values()))
        w = float(metrics[weighting_key])
        total += w
        for key, value in metrics.items():
            if key == weighting_key or not isinstance(value, int | float):
                continue
            if key.startswith("dp-"):
                maxima[key] = max(maxima.get(key, float("-inf")), float(value))
                continue
            if math.isnan(float(value)):
                sums.setdefault(key, 0.0)
                weights.setdefault(key, 0.0)
                continue
            sums[key] = sums.get(key, 0.0) + w * float(value)
            weights[key] = weights.get(key, 0.0) + w
    out = {k: (sums[k] / weights[k] if weights[k] > 0 else float("nan")) for k in sums}
    out.update(maxima)
    out[weighting_key] = total
    return MetricRecord(out)
