"""Aggregation speed: our robust rules against Flower's built-in ones, on identical inputs.

Every pair runs in this one process on the same seeded ``(n × d)`` float32 updates:

====================  ========================================================================
ours                  Flower (what is timed)
====================  ========================================================================
coordinate_median     ``FedMedian.aggregate_train`` on ``n`` train replies (no module-level
                      helper exists; the replies are rebuilt before every repetition because
                      it pops the arrays out of them, and the rebuild is not timed)
trimmed_mean          ``fedtrimmedavg.trim_mean`` on the already stacked ``(n × d)`` array
                      (the helper ``FedTrimmedAvg`` uses; no reply handling is timed)
krum                  ``multikrum.select_multikrum(contents, f, 1)`` +
                      ``strategy_utils.aggregate_arrayrecords`` (what ``Krum`` calls)
multi_krum            ``select_multikrum(contents, f, n - f)`` + ``aggregate_arrayrecords``
bulyan                ``Bulyan.aggregate_train`` (replies rebuilt per repetition, untimed)
====================  ========================================================================

**End to end** (the headline): whole strategies on the same train reply Messages, from the
list of replies to the aggregate ArrayRecord, decoding included: Flower's ``FedMedian``,
``FedTrimmedAvg``, ``Krum`` and ``MultiKrum`` ``.aggregate_train`` against our
``RobustAggregation`` (replies decoded once into the reused round matrix, the rule, the new
global model), alone and inside the app's ``ValidatedUpdates`` (see :func:`e2e_pairs`).

**Kernels**: ours receive the same numbers as one ``(n × d)`` tensor sharing memory with the
array Flower's trim_mean gets. Flower's reply-based calls also deserialise the arrays; our
pipeline's equivalent, stacking ``n`` ArrayRecords into a fresh tensor
(``strategies.flatten.stack``), is timed as its own row and folded into the "incl. stack"
speed-up. Every result is checked against Flower's (``allclose``; kernel Krum exactly) before
any number is reported.

Also timed, against a plain weighted mean: geometric_median, centered_clipping and
NNM∘mean. Times are the median of ``--reps`` repetitions after one warm-up call. Peak memory
is measured per call in a fresh child process (see :func:`measure_peak`).

Usage::

    python -m benchmarks.aggregation            # 50 × 1M and 200 × 100k; writes docs/aggregation.md
    python -m benchmarks.aggregation --quick    # small sizes, smoke test; writes nothing
    python -m benchmarks.aggregation --reps 5 --out /tmp/aggregation.md
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.app.message import arrayrecord as flwr_arrayrecord
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore.task_identity import TaskIdentity

from benchmarks import harness
from benchmarks.harness import Table
from strategies.flatten import shared_stack, stack
from strategies.robust import (
    bulyan,
    centered_clipping,
    compose,
    coordinate_median,
    geometric_median,
    krum,
    multi_krum,
    nearest_neighbor_mixing,
    trimmed_mean,
    weighted_mean,
)
from strategies.robust.strategy import RobustAggregation
from strategies.wrappers import SeededSampling, ValidatedUpdates

DEFAULT_OUT = Path("docs/aggregation.md")
SEED = 0
#: Flower's ``num-examples`` metric, also our weights where a rule uses them.
WEIGHT_KEY = "num-examples"
#: Seconds to sleep before each timed call (untimed) so idle OpenMP/OpenBLAS workers of the
#: previous call stop spinning and do not steal the 2 cores from the next one.
SETTLE = 0.05
#: Calls whose warm-up takes longer than this (s) are timed once (Flower's Bulyan).
SLOW_CALL = 5.0
#: Targets from the brief: speed-up over Flower, and geometric median cost in plain means.
MIN_SPEEDUP = 3.0
MAX_GEOMED_COST = 5.0
#: Largest client spread (the smallest is 1); see :func:`make_updates`.
SPREAD_MAX = 20.0


@dataclass(frozen=True)
class Size:
    """``n`` clients with ``d`` parameters, ``f`` of them Byzantine (far-away updates)."""

    n: int
    d: int
    f: int

    @property
    def label(self) -> str:
        d = f"{self.d // 1_000_000} M" if self.d % 1_000_000 == 0 else f"{self.d // 1000} k"
        return f"{self.n} clients × {d} params (f = {self.f})"


FULL_SIZES = (Size(50, 1_000_000, 10), Size(200, 100_000, 40))
QUICK_SIZES = (Size(20, 50_000, 4), Size(50, 20_000, 10))


# ------------------------------------------------------------------------------------ inputs


def make_updates(size: Size, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """``(n × d)`` float32 updates and per-client example counts.

    Client ``i`` sends ``s_i · N(0, I)`` with spreads ``s_i`` spaced geometrically from 1 to
    ``SPREAD_MAX``, assigned to clients in random order; the ``f`` most dispersed clients (the
    Byzantine ones) are also shifted by ``+3`` in every coordinate. Squared distances grow with
    both spreads, so every Krum score is monotone in the client's spread with a margin far
    above the sampling noise: Krum, Multi-Krum, and both Bulyan selections (our recursive
    Krum and Flower's one-shot Multi-Krum) must pick the least dispersed clients, and the
    outputs of both libraries are checked to agree.
    """
    n, d, f = size.n, size.d, size.f
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float32)
    spreads = np.geomspace(1.0, SPREAD_MAX, n)
    for rank, client in enumerate(rng.permutation(n)):
        rng.standard_normal(d, dtype=np.float32, out=x[client])
        x[client] *= np.float32(spreads[rank])
        if rank >= n - f:
            x[client] += np.float32(3.0)
    num_examples = rng.integers(10, 1000, size=n)
    return x, num_examples


def make_replies(x: np.ndarray, num_examples: np.ndarray) -> list[Message]:
    """One train reply per client: ``{"arrays": {"w": row}, "metrics": {num-examples}}``."""
    replies = []
    for i, row in enumerate(x):
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(row)}),
                "metrics": MetricRecord({WEIGHT_KEY: int(num_examples[i])}),
            }
        )
        instruction = Message(RecordDict(), dst_node_id=i + 1, message_type="train")
        replies.append(Message(content, reply_to=instruction))
    return replies


def _set_task_identity() -> None:
    # Messages need a run id outside a running Flower app.
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 1
    TaskIdentity.task_id = 1


# ------------------------------------------------------------------------------------ cases


@dataclass
class Case:
    """One timed call. ``prepare()`` builds a fresh argument (untimed) for ``run(arg)``."""

    name: str
    run: Callable[[Any], np.ndarray]
    prepare: Callable[[], Any] = lambda: None


@dataclass
class Pair:
    """Our rule, Flower's counterpart and how their outputs must agree."""

    rule: str
    ours: Case
    flower: Case
    flower_call: str
    check: Callable[[np.ndarray, np.ndarray], str]
    includes_records: bool  # Flower's timing includes deserialising the records


def _close(rtol: float, atol: float) -> Callable[[np.ndarray, np.ndarray], str]:
    def check(ours: np.ndarray, flower: np.ndarray) -> str:
        np.testing.assert_allclose(ours, flower, rtol=rtol, atol=atol)
        return f"allclose (rtol={rtol:g}, atol={atol:g})"

    return check


def _equal(ours: np.ndarray, flower: np.ndarray) -> str:
    np.testing.assert_array_equal(ours, flower)
    return "identical"


def _record_output(record: ArrayRecord | None) -> np.ndarray:
    assert record is not None, "Flower returned no aggregate"
    return record["w"].numpy()


#: Example count of every reply in the end-to-end pairs: equal counts make Flower's
#: example-weighted Multi-Krum average the uniform one a robust strategy uses.
E2E_EXAMPLES = 100


def global_model(d: int, seed: int = SEED + 1) -> np.ndarray:
    """The global model the end-to-end replies are client models of (``N(0, 0.1²)``)."""
    return np.random.default_rng(seed).standard_normal(d, dtype=np.float32) * np.float32(0.1)


def e2e_pairs(size: Size, x: np.ndarray) -> tuple[list[Pair], list[Case]]:
    """Whole strategies on the same train replies, from the list of reply Messages to the
    aggregate ArrayRecord: Flower's ``FedMedian``/``FedTrimmedAvg``/``Krum``/``MultiKrum``
    ``.aggregate_train`` against our :class:`RobustAggregation` (deltas against the global
    model, stacked once into the reused round matrix, the rule, the new global model); and
    ours inside the app's update validation (``ValidatedUpdates``: structure, NaN/Inf and
    norm-ratio checks on the same matrix, then seeded partition order) as a real round runs
    it. Replies are client *models* ``global + x_i``; every call gets freshly built replies
    (Flower's strategies pop their arrays), built untimed."""
    n, f = size.n, size.f
    g = global_model(size.d)
    models = x + g
    counts = np.full(n, E2E_EXAMPLES)
    global_record = ArrayRecord({"w": Array(g)})

    def replies() -> list[Message]:
        return make_replies(models, counts)

    def run_flower(strategy: Any) -> Callable[[Any], np.ndarray]:
        return lambda r: _record_output(strategy.aggregate_train(1, r)[0])

    def ours(rule: Callable[..., torch.Tensor], params: dict, validated: bool) -> Callable:
        robust = RobustAggregation(rule, rule_params=params)
        robust.round.begin(1, "train", global_record)  # what configure_train records
        if not validated:
            return run_flower(robust)
        chain = ValidatedUpdates(SeededSampling(robust, SEED, {}), max_norm_ratio=10.0)
        chain.round.begin(1, "train", global_record)
        return run_flower(chain)

    beta = f / n
    specs = [
        ("coordinate median", coordinate_median, {}, FedMedian(), "FedMedian", 1e-6),
        (f"trimmed mean (β = {beta:g})", trimmed_mean, {"beta": beta},
         FedTrimmedAvg(beta=beta), "FedTrimmedAvg", 1e-5),
        ("Krum", krum, {"num_byzantine": f}, Krum(num_malicious_nodes=f), "Krum", 1e-6),
        (f"Multi-Krum (m = n − f = {n - f})", multi_krum,
         {"num_byzantine": f, "num_selected": n - f},
         MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f), "MultiKrum", 1e-5),
    ]  # fmt: skip
    pairs, validated = [], []
    for rule_name, rule, params, flower, flower_name, tol in specs:
        pairs.append(
            Pair(
                rule_name,
                Case(f"RobustAggregation({rule.__name__})", ours(rule, params, False), replies),
                Case(flower_name, run_flower(flower), replies),
                f"{flower_name}.aggregate_train",
                _close(tol, tol),
                True,
            )
        )
        validated.append(
            Case(f"ValidatedUpdates ∘ RobustAggregation({rule.__name__})",
                 ours(rule, params, True), replies)
        )  # fmt: skip
    return pairs, validated


def build_cases(
    size: Size, x: np.ndarray, num_examples: np.ndarray
) -> tuple[list[Pair], list[Case], Case]:
    """The Flower pairs, our extra rules (first one: the weighted-mean baseline) and the
    stacking step, all on the same ``x``."""
    n, f = size.n, size.f
    xt = torch.from_numpy(x)  # shares memory with x
    wt = torch.from_numpy(num_examples.astype(np.float32))
    beta = f / n
    assert int(beta * n) == f, "trim fraction must cut exactly f per side"
    contents = [reply.content for reply in make_replies(x, num_examples)]
    records = [content["arrays"] for content in contents]

    def replies() -> list[Message]:
        return make_replies(x, num_examples)

    def ours(fn: Callable[[], torch.Tensor]) -> Callable[[Any], np.ndarray]:
        return lambda _: fn().numpy()

    def flower_krum(m: int) -> Callable[[Any], np.ndarray]:
        def run(_: Any) -> np.ndarray:
            selected = select_multikrum(contents, num_malicious_nodes=f, num_nodes_to_select=m)
            return _record_output(aggregate_arrayrecords(selected, WEIGHT_KEY))

        return run

    pairs = [
        Pair(
            "coordinate median",
            Case("coordinate_median", ours(lambda: coordinate_median(xt))),
            Case(
                "FedMedian",
                lambda r: _record_output(FedMedian().aggregate_train(1, r)[0]),
                replies,
            ),
            "FedMedian.aggregate_train",
            _close(1e-6, 1e-6),
            True,
        ),
        Pair(
            f"trimmed mean (β = {beta:g})",
            Case("trimmed_mean", ours(lambda: trimmed_mean(xt, beta=beta))),
            Case("trim_mean", lambda _: np.asarray(trim_mean(x, beta))),
            "fedtrimmedavg.trim_mean (stacked array)",
            _close(1e-5, 1e-5),
            False,
        ),
        Pair(
            "Krum",
            Case("krum", ours(lambda: krum(xt, num_byzantine=f))),
            Case("Krum", flower_krum(1)),
            "select_multikrum(m=1) + aggregate_arrayrecords",
            _equal,
            True,
        ),
        Pair(
            f"Multi-Krum (m = n − f = {n - f})",
            Case(
                "multi_krum",
                ours(lambda: multi_krum(xt, wt, num_byzantine=f, num_selected=n - f)),
            ),
            Case("MultiKrum", flower_krum(n - f)),
            "select_multikrum(m=n−f) + aggregate_arrayrecords",
            _close(1e-5, 1e-5),
            True,
        ),
        Pair(
            "Bulyan",
            Case("bulyan", ours(lambda: bulyan(xt, num_byzantine=f))),
            Case(
                "Bulyan",
                lambda r: _record_output(Bulyan(num_malicious_nodes=f).aggregate_train(1, r)[0]),
                replies,
            ),
            "Bulyan.aggregate_train",
            _check_bulyan,
            True,
        ),
    ]
    nnm_mean = compose([nearest_neighbor_mixing], weighted_mean)
    extras = [
        Case("weighted mean (baseline)", ours(lambda: weighted_mean(xt, wt))),
        Case("geometric median", ours(lambda: geometric_median(xt, wt))),
        Case("centered clipping (τ = 10, 1 iter)", ours(lambda: centered_clipping(xt, wt))),
        Case(f"NNM ∘ mean (f = {f})", ours(lambda: nnm_mean(xt, wt, num_byzantine=f))),
    ]
    stacking = Case(
        "stack n ArrayRecords → (n × d) tensor", lambda _: stack(records)[0][:1, :1].numpy()
    )
    return pairs, extras, stacking


def _check_bulyan(ours: np.ndarray, flower: np.ndarray) -> str:
    """Bulyan's coordinate step keeps the beta values closest to the median; Flower computes
    the median and the distances in float32, ours in float64, so a coordinate whose beta-th and
    (beta+1)-th closest values are equidistant up to float32 rounding may keep the other one.
    Allow at most 1e-5 of the coordinates to differ; everything else must be allclose."""
    bad = ~np.isclose(ours, flower, rtol=1e-5, atol=1e-5)
    if bad.mean() > 1e-5:
        np.testing.assert_allclose(ours, flower, rtol=1e-5, atol=1e-5)
    return f"allclose (rtol=1e-05, atol=1e-05) on {bad.size - bad.sum()}/{bad.size} coords"


# ------------------------------------------------------------------------------------ timing


class _TimedGC:
    """Stands in for the ``gc`` module inside Flower's ``arrayrecord`` module and adds up the
    time spent in its ``gc.collect()`` calls (``ArrayRecord.to_numpy_ndarrays(keep_input=
    False)`` collects after every record). Behaviour is unchanged; it is only accounting."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def collect(self, *args: Any) -> int:
        start = time.perf_counter()
        try:
            return gc.collect(*args)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


@contextlib.contextmanager
def _counting_gc(probes: list[_TimedGC]) -> Iterator[None]:
    """Flower's ``gc.collect()`` calls counted by a fresh :class:`_TimedGC` for the block."""
    probe = _TimedGC()
    flwr_arrayrecord.gc = probe  # type: ignore[attr-defined]
    try:
        yield
    finally:
        flwr_arrayrecord.gc = gc  # type: ignore[attr-defined]
        probes.append(probe)


def time_case(case: Case, reps: int) -> tuple[float, np.ndarray, float, int]:
    """Median wall time (s) of ``reps`` calls after one warm-up call, the last output, and the
    median time (s) and count of the ``gc.collect()`` calls Flower made inside those calls."""
    probes: list[_TimedGC] = []
    timing = harness.repeat(
        case.run, reps, prepare=case.prepare, collect=True, settle=SETTLE,
        slow=SLOW_CALL,  # a slow warm-up is timed once: keeps a full run within ~10 minutes
        around=lambda: _counting_gc(probes),
    )  # fmt: skip
    return (
        timing.median, timing.result, statistics.median(p.seconds for p in probes),
        probes[-1].calls,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ memory


def _child_peak(size: Size, group: str, index: int) -> float:
    """In a fresh process: build the inputs, warm the call up, then measure one call's peak
    resident memory above the resident memory just before it (MiB)."""
    _set_task_identity()
    harness.quiet("flwr")
    x, num_examples = make_updates(size)
    pairs, extras, stacking = build_cases(size, x, num_examples)
    cases = {
        "ours": [p.ours for p in pairs],
        "flower": [p.flower for p in pairs],
        "extra": extras,
        "stack": [stacking],
    }
    if group.startswith("e2e"):
        e2e, validated = e2e_pairs(size, x)
        cases = {
            "e2e-ours": [p.ours for p in e2e],
            "e2e-flower": [p.flower for p in e2e],
            "e2e-validated": validated,
        }
    case = cases[group][index]
    case.run(case.prepare())  # warm-up: one-time allocations (thread pools, BLAS buffers)
    arg = case.prepare()
    shared_stack().release()  # the round matrix counts: a first round allocates it
    gc.collect()
    with harness.PeakMemory() as peak:  # VmHWM reset to the current RSS, read after
        case.run(arg)
    return peak.mib


def measure_peak(size: Size, group: str, index: int) -> float | None:
    """Peak extra resident memory (MiB) of one call, measured in a fresh child process.

    ``tracemalloc`` sees neither torch's allocator nor numpy's large buffers reliably, so the
    child resets the kernel's high-water mark (``/proc/self/clear_refs`` = 5) just before the
    call and reads ``VmHWM`` after it. glibc is told to serve allocations above 128 KiB with
    ``mmap`` and to trim freed memory at once (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``), so memory freed by the warm-up call does not hide the
    measured call's temporaries. Inputs (the tensor, or Flower's serialised replies) are built
    before the reset and are not counted; outputs are. ``None`` if the measurement failed.
    """
    env = harness.child_env(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    spec = {"n": size.n, "d": size.d, "f": size.f, "group": group, "index": index}
    answer = harness.run_json_child(
        "benchmarks.aggregation", "--memory-child", json.dumps(spec), env=env
    )
    return None if answer is None else float(answer["peak_mib"])


# ------------------------------------------------------------------------------------ report


@dataclass
class PairResult:
    rule: str
    flower_call: str
    ours_s: float
    flower_s: float
    check: str
    includes_records: bool
    ours_mib: float | None = None
    flower_mib: float | None = None
    flower_gc_s: float = 0.0
    flower_gc_calls: int = 0

    @property
    def speedup(self) -> float:
        return self.flower_s / self.ours_s


@dataclass
class ExtraResult:
    name: str
    seconds: float
    mib: float | None = None


@dataclass
class SizeResult:
    size: Size
    pairs: list[PairResult] = field(default_factory=list)
    extras: list[ExtraResult] = field(default_factory=list)
    stack_s: float = 0.0
    stack_mib: float | None = None
    e2e: list[PairResult] = field(default_factory=list)
    validated: list[ExtraResult] = field(default_factory=list)

    @property
    def mean_s(self) -> float:
        return self.extras[0].seconds


def run_size(size: Size, reps: int, memory: bool) -> SizeResult:
    print(f"\n[{size.label}] generating inputs...", flush=True)
    x, num_examples = make_updates(size)
    pairs, extras, stacking = build_cases(size, x, num_examples)
    result = SizeResult(size)
    for pair in pairs:
        ours_s, ours_out, _, _ = time_case(pair.ours, reps)
        flower_s, flower_out, gc_s, gc_calls = time_case(pair.flower, reps)
        check = pair.check(ours_out, flower_out)  # raises if the outputs disagree
        result.pairs.append(
            PairResult(
                pair.rule, pair.flower_call, ours_s, flower_s, check, pair.includes_records,
                flower_gc_s=gc_s, flower_gc_calls=gc_calls,
            )
        )  # fmt: skip
        gc_note = f" (gc.collect ×{gc_calls}: {gc_s * 1e3:.0f} ms)" if gc_calls else ""
        print(
            f"  {pair.rule:34s} ours {ours_s * 1e3:9.1f} ms   Flower {flower_s * 1e3:9.1f} ms"
            f"{gc_note}   ×{flower_s / ours_s:6.1f}   {check}",
            flush=True,
        )
    for case in extras:
        seconds, _, _, _ = time_case(case, reps)
        result.extras.append(ExtraResult(case.name, seconds))
        print(f"  {case.name:34s} ours {seconds * 1e3:9.1f} ms", flush=True)
    result.stack_s, _, _, _ = time_case(stacking, reps)
    print(f"  {stacking.name:34s}      {result.stack_s * 1e3:9.1f} ms", flush=True)
    print("  end to end (reply Messages → aggregate ArrayRecord):", flush=True)
    e2e, validated = e2e_pairs(size, x)
    for pair, chain in zip(e2e, validated, strict=True):
        ours_s, ours_out, _, _ = time_case(pair.ours, reps)
        flower_s, flower_out, gc_s, gc_calls = time_case(pair.flower, reps)
        chain_s, chain_out, _, _ = time_case(chain, reps)
        check = pair.check(ours_out, flower_out)
        np.testing.assert_array_equal(chain_out, ours_out)  # validation changes nothing
        result.e2e.append(
            PairResult(
                pair.rule, pair.flower_call, ours_s, flower_s, check, True,
                flower_gc_s=gc_s, flower_gc_calls=gc_calls,
            )
        )  # fmt: skip
        result.validated.append(ExtraResult(chain.name, chain_s))
        print(
            f"  {pair.rule:34s} ours {ours_s * 1e3:9.1f} ms   Flower {flower_s * 1e3:9.1f} ms"
            f"   ×{flower_s / ours_s:6.1f}   validated {chain_s * 1e3:9.1f} ms"
            f"   ×{flower_s / chain_s:6.1f}   {check}",
            flush=True,
        )
    del x, num_examples, pairs, extras, stacking, e2e, validated
    gc.collect()
    if memory:
        print("  measuring peak memory (one child process per call)...", flush=True)
        for i, pair_result in enumerate(result.pairs):
            pair_result.ours_mib = measure_peak(size, "ours", i)
            pair_result.flower_mib = measure_peak(size, "flower", i)
        for i, extra in enumerate(result.extras):
            extra.mib = measure_peak(size, "extra", i)
        result.stack_mib = measure_peak(size, "stack", 0)
        for i, pair_result in enumerate(result.e2e):
            pair_result.ours_mib = measure_peak(size, "e2e-ours", i)
            pair_result.flower_mib = measure_peak(size, "e2e-flower", i)
            result.validated[i].mib = measure_peak(size, "e2e-validated", i)
    return result


def _gc_note(p: PairResult) -> str:
    if not p.flower_gc_calls:
        return ""
    return (
        f"; Flower's time includes {p.flower_gc_calls} `gc.collect()` calls made by "
        f"`ArrayRecord.to_numpy_ndarrays(keep_input=False)`, {p.flower_gc_s * 1e3:,.0f} ms in "
        f"this process (speed-up without them: {(p.flower_s - p.flower_gc_s) / p.ours_s:.1f}×)"
    )


def _shortfall_notes(result: SizeResult) -> list[str]:
    """For every end-to-end pair below ``MIN_SPEEDUP``: where our time goes, from this run's
    own rows (the rule alone on the stacked tensor vs the whole strategy)."""
    kernels = {p.rule: p.ours_s for p in result.pairs}
    notes = []
    for p in result.e2e:
        if p.speedup >= MIN_SPEEDUP or p.rule not in kernels:
            continue
        kernel = kernels[p.rule]
        note = (
            f"- **{p.rule} is {p.speedup:.1f}×, below {MIN_SPEEDUP:g}×.** Of our "
            f"{_ms(p.ours_s)} ms, the rule on the already stacked tensor takes {_ms(kernel)} "
            f"ms (kernel table below); decoding the replies into the round matrix, Flower's "
            f"reply checks (which its strategy pays too), the metrics and serialising the new "
            f"model take the other {_ms(max(p.ours_s - kernel, 0.0))} ms."
        )
        if "Krum" in p.rule:
            note += (
                " Krum's kernel is the n × n Gram matrix of the updates, n²d/2 multiply-adds "
                "through the same BLAS routine (`syrk`) that Flower's Krum calls, so the "
                "speed-up is bounded by what Flower spends around that product (decoding, "
                "stacking, squaring)."
            )
        notes.append(note)
    return notes


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def pair_rows(result: SizeResult) -> list[list[str]]:
    rows = []
    for p in result.pairs:
        incl = f"{p.flower_s / (p.ours_s + result.stack_s):.1f}×" if p.includes_records else "—"
        met = "✅" if p.speedup >= MIN_SPEEDUP else "❌"
        rows.append([
            p.rule, _ms(p.ours_s), _ms(p.flower_s), f"{p.speedup:.1f}× {met}", incl,
            _mib(p.ours_mib), _mib(p.flower_mib),
        ])  # fmt: skip
    return rows


def e2e_rows(result: SizeResult) -> list[list[str]]:
    rows = []
    for p, v in zip(result.e2e, result.validated, strict=True):
        met = "✅" if p.speedup >= MIN_SPEEDUP else "❌"
        with_checks = p.flower_s / v.seconds
        rows.append([
            p.rule, _ms(p.ours_s), _ms(p.flower_s), f"{p.speedup:.1f}× {met}",
            _ms(v.seconds), f"{with_checks:.1f}×", _mib(p.ours_mib), _mib(v.mib),
            _mib(p.flower_mib),
        ])  # fmt: skip
    return rows


E2E_HEADER = [
    "rule", "ours (ms)", "Flower (ms)", "speed-up", "ours + validation (ms)",
    "speed-up incl. validation", "ours peak (MiB)", "ours + validation peak (MiB)",
    "Flower peak (MiB)",
]  # fmt: skip


PAIR_HEADER = [
    "rule", "ours (ms)", "Flower (ms)", "speed-up", "speed-up incl. stack",
    "ours peak (MiB)", "Flower peak (MiB)",
]  # fmt: skip
EXTRA_HEADER = ["rule", "ours (ms)", "cost in plain means", "peak (MiB)"]


def extra_rows(result: SizeResult) -> list[list[str]]:
    rows = []
    for e in result.extras:
        cost = e.seconds / result.mean_s
        mark = ""
        if e.name.startswith("geometric median"):
            mark = " ✅" if cost <= MAX_GEOMED_COST else " ❌"
        rows.append([e.name, _ms(e.seconds), f"{cost:.1f}×{mark}", _mib(e.mib)])
    rows.append([
        "stack n ArrayRecords → (n × d) tensor", _ms(result.stack_s),
        f"{result.stack_s / result.mean_s:.1f}×", _mib(result.stack_mib),
    ])  # fmt: skip
    return rows


def print_tables(results: list[SizeResult]) -> None:
    for r in results:
        for title, header, rows in (
            (f"{r.size.label}: end to end, replies → aggregate", E2E_HEADER, e2e_rows(r)),
            (f"{r.size.label}: rules on a stacked tensor", PAIR_HEADER, pair_rows(r)),
            (f"{r.size.label}: cost vs a plain weighted mean", EXTRA_HEADER, extra_rows(r)),
        ):
            Table(header, title=title).extend(rows).print(width=120)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return Table(header).extend(rows).markdown()


def environment() -> dict[str, str]:
    """Machine, library versions and thread counts."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    blas = "unknown"
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(
            f"{i['internal_api']} {i.get('version') or ''} ({i['num_threads']} threads)".replace(
                "  ", " "
            )
            for i in threadpool_info()
        )
    except ImportError:
        pass
    return {
        "CPU": f"{cpu}, {harness.cpu_count()} logical cores",
        "memory": f"{harness.memory_gib():.0f} GiB",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "torch": f"{torch.__version__}: {torch.get_num_threads()} intra-op threads, "
        f"{torch.get_num_interop_threads()} inter-op threads",
        "numpy": f"{np.__version__} (Flower's kernels)",
        "native thread pools": blas,
        **harness.versions("flwr"),
    }


def write_markdown(
    path: Path,
    results: list[SizeResult],
    reps: int,
    load: tuple[tuple[float, ...], ...],
    session: harness.Session,
    threads: int | None,
) -> None:
    env = environment()
    parts = [
        "# Aggregation speed: ours vs Flower's built-in robust aggregation",
        "",
        f"{session.header()} (do not edit by hand). Our rules "
        "(`strategies/robust`) and Flower's counterparts aggregate the **same** float32 "
        "updates in one process; every output is checked against Flower's before timing is "
        "reported (✅ = at least "
        f"{MIN_SPEEDUP:g}× faster, or for the geometric median at most {MAX_GEOMED_COST:g}× "
        "a plain weighted mean).",
        "",
        "## Machine",
        "",
        *[f"- **{k}**: {v}" for k, v in env.items()],
        f"- **load average** (1, 5, 15 min) at start {load[0]}, at end {load[1]} — the machine"
        " is shared; a load above the core count means other jobs competed for the cores",
        "",
    ]
    for r in results:
        parts += [
            f"## {r.size.label}",
            "",
            f"Input: {r.size.n * r.size.d * 4 / 2**20:,.0f} MiB of float32 updates.",
            "",
            "**End to end** (what a round pays: the list of reply `Message`s → the aggregate "
            "`ArrayRecord`, decoding and stacking included):",
            "",
            _markdown_table(E2E_HEADER, e2e_rows(r)),
            "",
            *[f"- {p.rule}: `{p.flower_call}`; {p.check}{_gc_note(p)}" for p in r.e2e],
            *_shortfall_notes(r),
            "",
            "**Rules on an already stacked tensor** (kernels; *incl. stack* adds "
            "`strategies.flatten.stack` into a fresh tensor):",
            "",
            _markdown_table(PAIR_HEADER, pair_rows(r)),
            "",
            "Flower calls and checks:",
            "",
            *[f"- {p.rule}: `{p.flower_call}`; {p.check}{_gc_note(p)}" for p in r.pairs],
            "",
            _markdown_table(EXTRA_HEADER, extra_rows(r)),
            "",
        ]
    parts += [
        "## How it was measured",
        "",
        f"- **Inputs** (seed {SEED}): client *i* sends `s_i · N(0, I)` with spreads `s_i` "
        f"spaced geometrically from 1 to {SPREAD_MAX:g} in random client order; the *f* most "
        "dispersed (Byzantine) clients are also shifted by +3. Krum scores grow with the "
        "spread by a wide margin, so Krum, Multi-Krum and both Bulyan selections (our "
        "recursive Krum, Flower's one-shot Multi-Krum) must pick the same clients; example "
        "counts are uniform in [10, 1000). "
        "Weights (example counts) are passed to our weighted mean, Multi-Krum (Flower "
        "weights Multi-Krum's average by them too), geometric median, clipping and NNM; median, "
        "trimmed mean, Krum and Bulyan are unweighted like Flower's.",
        "- **End to end**: each strategy's `aggregate_train(1, replies)` on freshly built "
        "(untimed) train replies carrying client models `global + x_i` (global model "
        "`N(0, 0.1²)`) and equal example counts "
        f"({E2E_EXAMPLES}, so Flower's example-weighted Multi-Krum average is the uniform one "
        "our robust strategy uses). Ours is `RobustAggregation`: the deltas against the "
        "global model decoded once from the replies' bytes into the round matrix "
        "(`strategies.flatten.stack_deltas`, one reused buffer: after the warm-up call, as "
        "from a run's second round on, it is not allocated again), the rule, the new global "
        "model serialised; *ours + validation* puts the app's `ValidatedUpdates` "
        "(structure, NaN/Inf and a 10× norm-ratio bound, all on that matrix; these inputs' "
        "spreads stay under it, so nothing is clipped or rejected and the output can be "
        "compared, where the app's default 3× bound would clip the widest updates) and "
        "`SeededSampling` around it, as a real round does. Results are checked against "
        "Flower's (allclose: ours aggregates deltas and adds the global model back, so "
        "float32 rounding differs by an ulp) and the validated chain's against the plain "
        "strategy's (identical). Peak memory of these rows counts the round matrix (it "
        "is released before the measured call).",
        "- **Ours** (kernel rows) get a `(n × d)` torch tensor sharing memory with the numpy "
        "array; **Flower** gets what its strategy works on: `Message` replies (for "
        "`aggregate_train`), their `RecordDict` contents (Krum helpers), or the stacked array "
        "(`trim_mean`). Calls "
        "that consume their replies (`FedMedian`, `Bulyan` pop the arrays) get freshly built "
        "replies before every repetition; building them is not timed. Flower's reply-based "
        "timings include deserialising the arrays; the *stack* row times our equivalent "
        "(`strategies.flatten.stack`: n ArrayRecords → one tensor) and *speed-up incl. stack* "
        "adds it to ours.",
        f"- **Time**: wall clock (`time.perf_counter`), median of {reps} repetitions after one "
        f"warm-up call (calls whose warm-up took over {SLOW_CALL:g} s, i.e. Flower's Bulyan, "
        "are timed once to keep a run near 10 minutes); before each call `gc.collect()` and a "
        f"{SETTLE * 1e3:.0f} ms pause (untimed) let the previous call's spinning "
        "OpenMP/OpenBLAS workers go idle. "
        + (
            "torch and numpy use their default thread pools (numbers above)."
            if threads is None
            else f"torch and numpy's BLAS were limited to {threads} thread(s) (`--threads "
            f"{threads}`): with other jobs competing for the 2 cores, OpenMP/BLAS fork-join "
            "barriers wait for descheduled workers and multi-threaded timings of both "
            "libraries swing by 10× between runs, while single-threaded ones are stable."
        ),
        "- **Peak memory**: one fresh child process per call (same inputs); after a warm-up "
        "call the kernel's RSS high-water mark is reset (`/proc/self/clear_refs` = 5) and "
        "`VmHWM` − RSS-before is reported: the extra resident memory of the call, torch and "
        "numpy alike (tracemalloc would miss torch). glibc runs with "
        "`MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=131072` so freed memory is returned "
        "at once and cannot hide temporaries. Inputs are excluded, outputs included.",
        "- **Cost in plain means**: time / time of our `weighted_mean` on the same input.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    print(f"\nwrote {path}")


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(
        __doc__, quick="small sizes, 2 repetitions",
        reps=harness.opt(None, "timed repetitions (default 3)"),
        out=harness.opt(None, "markdown report path"),
    )  # fmt: skip
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory children")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="limit torch and numpy's BLAS to this many threads (default: their defaults)",
    )
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.threads is not None:
        harness.limit_threads(args.threads)
    if args.memory_child is not None:
        spec = json.loads(args.memory_child)
        size = Size(spec["n"], spec["d"], spec["f"])
        print(json.dumps({"peak_mib": _child_peak(size, spec["group"], spec["index"])}))
        return 0

    _set_task_identity()
    harness.quiet("flwr")
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    reps = args.reps or (2 if args.quick else 3)
    out = harness.resolve_out(args, DEFAULT_OUT)
    session = harness.start("aggregation", argv, out, allow_dirty=args.allow_dirty)
    load_start = harness.load_averages()
    busy = len(harness.processes_with("flwr"))
    print(f"load average {load_start}; {busy} other flwr processes running")
    results = [run_size(size, reps, memory=not args.no_memory) for size in sizes]
    load_end = harness.load_averages()
    print_tables(results)
    print(f"total {session.seconds:.0f} s; load average at end {load_end}")
    if out is not None:
        write_markdown(out, results, reps, (load_start, load_end), session, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
