"""What each of fedsilo's features costs per round, timed in a real in-process federation.

``python -m benchmarks.overhead`` compares a round of the app with a round of a plain
Flower app doing the same training (``benchmarks/plain_flower_app``); this module says
where the difference goes. It wraps the functions that implement each feature with
timers (the real code runs unchanged; only a clock is added around it), runs the app's
ServerApp body and ClientApp on :class:`fl_app.inprocess.InProcessGrid`, and reports each
feature's **exclusive** time per round: time inside its functions minus time inside other
timed functions they call (ValidatedUpdates' own checks, not the FedAvg it wraps).

Per-round figures are the mean over rounds 2…n (round 1 pays one-time imports), cut at
the audit log's ``checkpoint`` entry that ends every round.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks import harness
from benchmarks.harness import Column, Table

#: label → targets (``module:attribute`` or ``module:Class.method``) and what it is.
#: Targets missing from a revision are reported as such, not an error.
FEATURES: dict[str, tuple[tuple[str, ...], str]] = {
    "checkpoint": (
        (
            "fl_app.federation:checkpoint_bytes",
            "fl_app.stores:LocalCheckpointStore.save",
        ),
        "serialise the model + strategy/RNG state, sha256, atomic write, every round",
    ),
    "audit log": (
        ("fl_app.audit:AuditLog.record",),
        "hash-chained JSONL entry per event (checkpoint, participants, rejections)",
    ),
    "update validation": (
        (
            "strategies.wrappers:ValidatedUpdates.configure_train",
            "strategies.wrappers:ValidatedUpdates.aggregate_train",
            "strategies.wrappers:ValidatedUpdates.aggregate_evaluate",
        ),
        "shape/dtype/finite checks and the norm-ratio filter on every update",
    ),
    "seeded sampling": (
        (
            "strategies.wrappers:SeededSampling.configure_train",
            "strategies.wrappers:SeededSampling.configure_evaluate",
            "strategies.wrappers:SeededSampling.aggregate_train",
            "strategies.wrappers:SeededSampling.aggregate_evaluate",
        ),
        "cohort drawn from the seed by partition id; replies put in partition order",
    ),
    "quorum, retries, payload limit": (
        (
            "fl_app.reliability:ReliableRounds.configure_train",
            "fl_app.reliability:ReliableRounds.aggregate_train",
            "fl_app.reliability:ReliableRounds.configure_evaluate",
            "fl_app.reliability:ReliableRounds.aggregate_evaluate",
        ),
        "reply size limit, sampling.min-train-nodes check, participants to the audit log",
    ),
    "byte counting": (
        ("strategies.traffic:message_bytes",),
        "serialised size of every instruction and reply (bytes-uploaded/-downloaded)",
    ),
    "compression wrapper (off)": (
        (
            "strategies.compression.strategy:CompressedUpdates.configure_train",
            "strategies.compression.strategy:CompressedUpdates.aggregate_train",
        ),
        "the decoding wrapper's own work with compression.method = none",
    ),
    "metrics reporting + sinks": (
        (
            "strategies.wrappers:RoundReporter.aggregate_train",
            "strategies.wrappers:RoundReporter.aggregate_evaluate",
            "fl_app.sinks:Sinks.log_metrics",
            "fl_app.sinks:Sinks.log_silo_metrics",
        ),
        "per-round and per-silo rows: console, metrics.json/.csv, silo_metrics.json",
    ),
    "run config per message": (
        ("fl_app.config:RunConfig.from_flower",),
        "the ClientApp validates the typed run config on every message",
    ),
    "FedAvg aggregation (Flower's, in both apps)": (
        (
            "flwr.serverapp.strategy.fedavg:FedAvg.aggregate_train",
            "flwr.serverapp.strategy.fedavg:FedAvg.aggregate_evaluate",
        ),
        "reference: the aggregation plain Flower pays too",
    ),
}


@dataclass
class Timers:
    """Exclusive wall time per label: a timed call's time minus the time of the timed
    calls nested in it."""

    clock: Callable[[], float] = time.perf_counter
    totals: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    snapshots: list[dict[str, float]] = field(default_factory=list)
    _stack: list[list[float]] = field(default_factory=list)

    def wrap(self, label: str, fn: Callable) -> Callable:
        """``fn`` with its exclusive time added to ``label``."""

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._stack.append([0.0])  # time of nested timed calls
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = self.clock() - start
                nested = self._stack.pop()[0]
                self.totals[label] = self.totals.get(label, 0.0) + elapsed - nested
                self.calls[label] = self.calls.get(label, 0) + 1
                if self._stack:
                    self._stack[-1][0] += elapsed

        return timed

    def snapshot(self) -> None:
        """Remember the totals so far (called at the end of every round)."""
        self.snapshots.append(dict(self.totals))


def _resolve(target: str) -> tuple[Any, str, Any] | None:
    """``(owner, attribute, current value)`` of ``module:Name`` / ``module:Class.method``."""
    module_name, _, path = target.partition(":")
    try:
        owner: Any = importlib.import_module(module_name)
    except ImportError:
        return None
    *parents, attr = path.split(".")
    for name in parents:
        owner = getattr(owner, name, None)
        if owner is None:
            return None
    if not hasattr(owner, attr):
        return None
    own = owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr)
    return owner, attr, own


def install(timers: Timers, features: dict = FEATURES) -> tuple[Callable[[], None], list[str]]:
    """Wrap every feature's targets; returns ``(undo, missing targets)``."""
    undo: list[tuple[Any, str, Any, bool]] = []
    missing: list[str] = []
    for label, (targets, _) in features.items():
        for target in targets:
            found = _resolve(target)
            if found is None:
                missing.append(target)
                continue
            owner, attr, own = found
            inherited = isinstance(owner, type) and own is None
            current = getattr(owner, attr) if inherited else own
            if isinstance(current, classmethod):
                wrapped: Any = classmethod(timers.wrap(label, current.__func__))
            elif isinstance(current, staticmethod):
                wrapped = staticmethod(timers.wrap(label, current.__func__))
            else:
                wrapped = timers.wrap(label, current)
            setattr(owner, attr, wrapped)
            undo.append((owner, attr, own, inherited))
    # Every round ends with the audit log's checkpoint entry: cut the totals there.
    found = _resolve("fl_app.audit:AuditLog.record")
    if found is not None:
        owner, attr, _ = found
        record = getattr(owner, attr)

        def record_and_cut(self, event, *args, **kwargs):
            result = record(self, event, *args, **kwargs)
            if event == "checkpoint":
                timers.snapshot()
            return result

        setattr(owner, attr, record_and_cut)
        undo.append((owner, attr, record, False))

    def restore() -> None:
        for owner, attr, own, inherited in reversed(undo):
            if inherited:
                delattr(owner, attr)
            else:
                setattr(owner, attr, own)

    return restore, missing


def per_round(timers: Timers, skip: int = 1) -> dict[str, float]:
    """Mean exclusive seconds per round of every label over rounds ``skip+1``…n (the
    first snapshot is round 0's checkpoint, before any round)."""
    snaps = timers.snapshots
    deltas = [
        {k: v - before.get(k, 0.0) for k, v in after.items()}
        for before, after in itertools.pairwise(snaps)
    ][skip:]
    labels = {k for d in deltas for k in d}
    return {k: statistics.fmean(d.get(k, 0.0) for d in deltas) for k in labels} if deltas else {}


def measure_features(
    rounds: int, silos: int, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run an in-process federation of ``silos`` silos for ``rounds`` rounds (run-config
    ``overrides`` with dotted keys) under the timers; returns ``{"per_round": {label: s},
    "wall": [s per round], "missing": […]}``."""
    from fl_app.client_app import app
    from fl_app.config import RunConfig
    from fl_app.federation import run_federation
    from fl_app.inprocess import InProcessGrid

    harness.limit_threads(1, native=False)
    timers = Timers()
    restore, missing = install(timers)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = RunConfig(
                num_server_rounds=rounds,
                sampling={"min-available-nodes": silos},
                output={"run-dir": tmp},
            ).replace(overrides or {})
            start = time.perf_counter()
            run_federation(InProcessGrid(app, cfg.to_flower(), silos), cfg)
            total = time.perf_counter() - start
    finally:
        restore()
    return {"per_round": per_round(timers), "total": total, "missing": missing,
            "calls": dict(timers.calls)}  # fmt: skip


def markdown_rows(costs: dict[str, Any], difference: float | None) -> str:
    """A markdown table of the features' ms per round (and share of ``difference``, the
    seconds per round our app takes beyond plain Flower, when given)."""
    table = Table(["feature", "what it does", Column("ms / round", ".1f"),
                   Column("share of ours − plain", ".0%")], align="llrr")  # fmt: skip
    ours = 0.0
    for label, (_, what) in FEATURES.items():
        seconds = costs["per_round"].get(label)
        if seconds is None:
            continue
        share = None
        if difference and "in both apps" not in label:
            share = seconds / difference
            ours += seconds
        table.add(label, what, seconds * 1e3, share)
    if difference:
        table.add("**our features, summed**", "", f"**{ours * 1e3:.1f}**",
                  f"**{ours / difference:.0%}**")  # fmt: skip
    return table.markdown()
