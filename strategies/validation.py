"""Reject malformed or poisoned client updates before any aggregator sees them.

A train reply is accepted only if it has exactly one ArrayRecord with the global model's
keys, shapes and dtypes, all values finite, one MetricRecord with a finite, non-negative
``num-examples`` and the same metric keys as the rest of the cohort, and (optionally) an
update norm within ``max_norm_ratio`` × the cohort's median update norm. Evaluate replies
get the metric checks. A rejected reply is logged with its node and partition id and the
reason, counted, and left out; the round goes on with the rest.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from strategies.flatten import Layout, array_values, records_of, shared_stack


@dataclass(frozen=True)
class Rejection:
    """One rejected reply."""

    node_id: int
    partition_id: int
    reason: str


def check_reply(
    msg: Message, reference: ArrayRecord, weight_key: str = "num-examples"
) -> str | None:
    """Why ``msg`` is not a well-formed train reply for ``reference`` (``None`` = fine)."""
    reason = check_structure(msg, reference, weight_key)
    if reason is None:
        reason = non_finite_reason(records_of(msg.content, ArrayRecord)[0], reference)
    return reason


def check_structure(
    msg: Message, reference: ArrayRecord, weight_key: str = "num-examples"
) -> str | None:
    """:func:`check_reply` without the finiteness check: records, metrics, keys, shapes,
    dtypes, and payloads that decode to the declared dtype and shape (read in place)."""
    content = msg.content
    array_records = records_of(content, ArrayRecord)
    if len(array_records) != 1:
        return f"expected exactly one ArrayRecord, got {len(array_records)}"
    if (reason := check_metrics(msg, weight_key)) is not None:
        return reason
    arrays = array_records[0]
    if set(arrays.keys()) != set(reference.keys()):
        missing = sorted(set(reference.keys()) - set(arrays.keys()))
        extra = sorted(set(arrays.keys()) - set(reference.keys()))
        return f"array keys differ from the global model (missing {missing}, unexpected {extra})"
    for key, ref in reference.items():
        arr = arrays[key]
        if tuple(arr.shape) != tuple(ref.shape):
            return f"array '{key}' has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}"
        if arr.dtype != ref.dtype:
            return f"array '{key}' has dtype {arr.dtype}, expected {ref.dtype}"
        try:
            array_values(arr)
        except Exception as exc:  # undecodable bytes
            return f"array '{key}' cannot be decoded: {exc}"
    return None


def non_finite_reason(arrays: ArrayRecord, reference: ArrayRecord) -> str | None:
    """Which floating array of ``arrays`` (structurally checked) holds NaN or Inf."""
    for key in reference:
        values = array_values(arrays[key])
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            return f"array '{key}' contains NaN or Inf"
    return None


def check_metrics(msg: Message, weight_key: str = "num-examples") -> str | None:
    """Why ``msg`` is not a well-formed evaluate reply (``None`` = fine)."""
    metric_records = records_of(msg.content, MetricRecord)
    if len(metric_records) != 1:
        return f"expected exactly one MetricRecord, got {len(metric_records)}"
    weight = metric_records[0].get(weight_key)
    if not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
        return f"'{weight_key}' must be a finite number ≥ 0, got {weight!r}"
    return None


def _metric_keys(msg: Message) -> frozenset[str]:
    return frozenset(records_of(msg.content, MetricRecord)[0].keys())


def consistent_metrics(
    replies: list[Message], partition_of: Callable[[Message], int]
) -> tuple[list[Message], list[Rejection]]:
    """Keep the replies whose metric keys are the cohort's most common key set (Flower's
    aggregation refuses a round whose replies disagree)."""
    good = [m for m in replies if not m.has_error()]
    if not good:
        return replies, []
    counts = Counter(_metric_keys(m) for m in good)
    majority = max(counts, key=lambda keys: (counts[keys], -len(keys)))
    rejected = [
        Rejection(
            m.metadata.src_node_id,
            partition_of(m),
            f"metric keys {sorted(_metric_keys(m))} differ from the cohort's {sorted(majority)}",
        )
        for m in good
        if _metric_keys(m) != majority
    ]
    drop = {id(m) for m in good if _metric_keys(m) != majority}
    return [m for m in replies if id(m) not in drop], rejected


def filter_evaluate_replies(
    replies: Iterable[Message], *, partition_of: Callable[[Message], int] = lambda m: -1
) -> tuple[list[Message], list[Rejection]]:
    """Evaluate replies that Flower can aggregate, and the rejections."""
    accepted, rejected = [], []
    for msg in replies:
        reason = None if msg.has_error() else check_metrics(msg)
        if reason is None:
            accepted.append(msg)
        else:
            rejected.append(Rejection(msg.metadata.src_node_id, partition_of(msg), reason))
    accepted, inconsistent = consistent_metrics(accepted, partition_of)
    return accepted, rejected + inconsistent


def norm_outliers(
    updates: torch.Tensor, reference: torch.Tensor, max_norm_ratio: float
) -> list[tuple[int, float, float]]:
    """Rows whose update norm ‖x_i − reference‖ exceeds ``max_norm_ratio`` × the median
    norm: ``[(row, norm, median), …]``. Needs ≥ 3 rows to have a meaningful median."""
    if max_norm_ratio <= 0 or len(updates) < 3:
        return []
    return outliers_of(torch.linalg.vector_norm(updates - reference, dim=1), max_norm_ratio)


def outliers_of(norms: torch.Tensor, max_norm_ratio: float) -> list[tuple[int, float, float]]:
    """:func:`norm_outliers` from the update norms themselves."""
    median = float(norms.median())
    limit = max_norm_ratio * max(median, 1e-12)
    return [(i, float(n), median) for i, n in enumerate(norms.tolist()) if n > limit]


def filter_replies(
    replies: Iterable[Message],
    reference: ArrayRecord,
    *,
    max_norm_ratio: float = 0.0,
    partition_of: Callable[[Message], int] = lambda m: -1,
    clip: list[Rejection] | None = None,
) -> tuple[list[Message], list[Rejection]]:
    """Split train replies into accepted ones and rejections (error replies pass through
    untouched: Flower's strategies count them as failures).

    An update whose norm exceeds ``max_norm_ratio`` × the cohort median is rejected, or,
    when a ``clip`` list is given, accepted with its delta scaled down to exactly that
    norm (:func:`clip_update`, the reply's arrays replaced) and recorded in ``clip``.

    The arrays of the structurally sound replies are decoded once, as deltas against
    ``reference``, into the round's shared matrix (:func:`strategies.flatten.shared_stack`):
    each row is checked for NaN/Inf (a non-finite row sum, confirmed array by array in the
    received dtype) and measured while it is in cache, and a robust strategy aggregates the
    accepted rows without decoding them again.
    """
    accepted, rejected = [], []
    for msg in replies:
        if msg.has_error():
            accepted.append(msg)
            continue
        reason = check_structure(msg, reference)
        if reason is None:
            accepted.append(msg)
        else:
            rejected.append(Rejection(msg.metadata.src_node_id, partition_of(msg), reason))
    good = [m for m in accepted if not m.has_error()]
    norms: dict[int, float] = {}
    if good:
        measure = max_norm_ratio > 0
        _, put = shared_stack().begin(len(good), Layout.of(reference), reference)
        drop = set()
        for i, msg in enumerate(good):
            arrays = records_of(msg.content, ArrayRecord)[0]
            row = put(i, arrays)
            if not bool(torch.isfinite(row.sum())):  # NaN/Inf, or a float32 sum overflow
                reason = non_finite_reason(arrays, reference)
                if reason is not None:
                    drop.add(id(msg))
                    rejected.append(Rejection(msg.metadata.src_node_id, partition_of(msg), reason))
                    continue
            if measure:
                norms[id(msg)] = float(torch.linalg.vector_norm(row))
        accepted = [m for m in accepted if id(m) not in drop]
    accepted, inconsistent = consistent_metrics(accepted, partition_of)
    rejected += inconsistent
    good = [m for m in accepted if not m.has_error()]
    if max_norm_ratio > 0 and len(good) >= 3:
        outliers = outliers_of(torch.tensor([norms[id(m)] for m in good]), max_norm_ratio)
        drop = set()
        for i, norm, median in outliers:
            msg = good[i]
            bound = max_norm_ratio * median
            why = f"update norm {norm:.4g} exceeds {max_norm_ratio:g} × cohort median {median:.4g}"
            event = Rejection(msg.metadata.src_node_id, partition_of(msg), why)
            if clip is None:
                drop.add(id(msg))
                rejected.append(event)
            else:
                clip_update(msg, reference, bound / norm)
                clip.append(replace(event, reason=f"{why}: scaled to {bound:.4g}"))
        accepted = [m for m in accepted if id(m) not in drop]
    return accepted, rejected


def clip_update(msg: Message, reference: ArrayRecord, scale: float) -> None:
    """Replace ``msg``'s arrays by ``reference + scale · (arrays − reference)``, computed in
    float64 and stored in each array's received dtype (arrays of other dtypes, e.g. integer
    counters, are kept as received)."""
    key = next(k for k, v in msg.content.items() if isinstance(v, ArrayRecord))
    record = msg.content[key]
    arrays = {}
    for name, array in record.items():
        x = array.numpy()
        if np.issubdtype(x.dtype, np.floating):
            ref = reference[name].numpy().astype(np.float64)
            x = (ref + scale * (x.astype(np.float64) - ref)).astype(x.dtype)
        arrays[name] = Array(x)
    msg.content[key] = ArrayRecord(arrays)


#: Headroom over the global model's size for metrics and metadata when no explicit
#: ``robust.max-update-bytes`` is set.
PAYLOAD_HEADROOM = 1 << 20


def payload_bytes(msg: Message) -> int:
    """Bytes of a reply's content as received: the serialised bytes of every array plus
    the serialised size of every other record (metrics, configs)."""
    total = 0
    for record in msg.content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(arr.data) for arr in record.values())
        else:
            total += len(record.deflate())
    return total


def default_max_bytes(reference: ArrayRecord) -> int:
    """The automatic payload limit: twice the global model's serialised size (a secure
    aggregation upload is one uint64 per float32 parameter) + 1 MiB."""
    return 2 * sum(len(arr.data) for arr in reference.values()) + PAYLOAD_HEADROOM


def check_payload_size(msg: Message, max_bytes: int) -> str | None:
    """Why ``msg`` is too large (``None`` = fine; ``max_bytes`` ≤ 0 = no limit)."""
    if max_bytes <= 0 or msg.has_error():
        return None
    size = payload_bytes(msg)
    if size > max_bytes:
        return (
            f"payload of {size} bytes exceeds robust.max-update-bytes = {max_bytes} (raise "
            "'robust.max-update-bytes' if the silos legitimately send more)"
        )
    return None


def keep_dtypes(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """``arrays`` with each array cast to the dtype of the same key in ``reference``
    (unchanged, same object, when they already agree)."""
    changed = {
        key: arr
        for key, arr in arrays.items()
        if key in reference and arr.dtype != reference[key].dtype
    }
    if not changed:
        return arrays
    return ArrayRecord(
        {
            key: Array(arr.numpy().astype(reference[key].dtype)) if key in changed else arr
            for key, arr in arrays.items()
        }
    )
