"""The fast aggregation paths give the same numbers as their references.

* Order statistics: the sorted-block kernel (NumPy sort of transposed column blocks) against
  the comparator network it replaced on CPU floats, bit for bit, on inputs with ties,
  duplicates, signed zeros and widths that straddle a block.
* The round matrix: ``array_values`` reads an Array's bytes in place (and refuses a payload
  that contradicts its declared dtype or shape); ``SharedStack`` reuses the rows decoded by
  the validation, moves them up when replies were dropped, and decodes what it lacks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from strategies import flatten as fl
from strategies.robust import coordinate_median, kernels, trimmed_mean


def _inputs(n: int, d: int, seed: int, ties: bool) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    n, d = x.shape
    if ties:  # few distinct values: many ties per coordinate, duplicated rows, ±0
        x = np.round(x * 2) / 2
        x[n // 2] = x[0]
        x[:, 0] = 0.0
        x[::2, d // 2] = -0.0
    return torch.from_numpy(x)


@pytest.fixture
def network_only(monkeypatch):
    """Force the comparator-network path (the reference)."""

    def run(fn, *args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(kernels, "NUMPY_SORTABLE", ())
            return fn(*args, **kwargs)

    return run


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 33])
@pytest.mark.parametrize("d", [1, 5, kernels.SORT_WIDTH + 3])
@pytest.mark.parametrize("ties", [False, True])
def test_sorted_blocks_equal_the_network(n, d, ties, network_only):
    x = _inputs(n, d, seed=n * 1000 + d, ties=ties)
    median = coordinate_median(x)
    assert torch.equal(median, network_only(coordinate_median, x))
    assert torch.equal(median, x.median(dim=0).values) or n % 2 == 0
    if n >= 3:
        k = (n - 1) // 2
        trimmed = trimmed_mean(x, num_byzantine=k)
        assert torch.equal(trimmed, network_only(trimmed_mean, x, num_byzantine=k))
        ref = x.double().sort(dim=0).values[k : n - k].mean(dim=0).float()
        torch.testing.assert_close(trimmed, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("ties", [False, True])
def test_sorted_blocks_float64_and_threads(ties, network_only):
    x = _inputs(21, 3 * kernels.SORT_WIDTH + 1, seed=5, ties=ties).double()
    if not ties:  # float64 values whose sums round: the summation order must be the same
        x = x * torch.exp(torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        fast = trimmed_mean(x, beta=0.2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(fast, network_only(trimmed_mean, x, beta=0.2))


def test_weighted_paths_unchanged():
    x = _inputs(9, 17, seed=3, ties=True)
    w = torch.arange(1, 10, dtype=torch.float64)
    # weighted median/trimmed mean keep the stable-sort path: compare to a direct reference
    order = x.double().sort(dim=0, stable=True)
    cum = torch.cumsum(w[order.indices], dim=0)
    half = 0.5 * float(w.sum())
    lower = (cum < half - 1e-9 * 2 * half).sum(dim=0)
    upper = (cum <= half + 1e-9 * 2 * half).sum(dim=0)
    ref = 0.5 * (order.values.gather(0, lower[None])[0] + order.values.gather(0, upper[None])[0])
    assert torch.equal(coordinate_median(x, w), ref.float())


# ------------------------------------------------------------------------- the round matrix


def _record(seed: int, dtype=np.float32) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        {
            "w": Array(rng.standard_normal((3, 4)).astype(dtype)),
            "b": Array(rng.standard_normal(5).astype(dtype)),
            "steps": Array(np.array(seed, dtype=np.int64)),
        }
    )


def test_array_values_reads_in_place_and_matches_numpy():
    for dtype in (np.float32, np.float64, np.float16, ">f4", np.int64):
        arr = Array(np.arange(12, dtype=dtype).reshape(3, 4))
        view = fl.array_values(arr)
        np.testing.assert_array_equal(view, arr.numpy().reshape(-1))
    fortran = Array(np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)))
    np.testing.assert_array_equal(fl.array_values(fortran), np.arange(6, dtype=np.float32))


def test_array_values_refuses_a_payload_that_contradicts_the_declaration():
    good = Array(np.zeros((2, 3), dtype=np.float32))
    liar = Array(dtype="float32", shape=(2, 3), stype=good.stype, data=Array(np.zeros(5)).data)
    with pytest.raises(ValueError, match="declares"):
        fl.array_values(liar)
    with pytest.raises(ValueError):
        fl.array_values(Array(dtype="float32", shape=(2, 3), stype=good.stype, data=b"\x7f" * 7))


def test_stack_and_flatten_match_the_numpy_decoding():
    records = [_record(i) for i in range(4)]
    matrix, layout = fl.stack(records)
    for i, record in enumerate(records):
        expected = np.concatenate([record[k].numpy().reshape(-1) for k in layout.keys])
        np.testing.assert_array_equal(matrix[i].numpy(), expected.astype(np.float32))
        assert torch.equal(fl.flatten(record, layout), matrix[i])
    out = torch.empty_like(matrix)
    assert fl.stack(records, layout, out=out)[0] is out
    assert torch.equal(out, matrix)


@pytest.mark.parametrize("keep", [[0, 1, 2, 3, 4], [0, 2, 4], [1, 3], [4, 0, 2], [2, 2, 0]])
def test_shared_stack_reuses_moves_and_decodes(keep):
    shared = fl.SharedStack()
    reference = _record(99)
    records = [_record(i, np.float64 if i == 3 else np.float32) for i in range(5)]
    layout = fl.Layout.of(reference)
    _, put = shared.begin(len(records), layout, reference)
    for i, record in enumerate(records):
        put(i, record)
    wanted = [records[i] for i in keep]
    expected, _ = fl.stack(wanted, layout)
    expected -= fl.flatten(reference, layout)
    assert torch.equal(shared.take(wanted, layout, reference), expected)
    # Taken rows are forgotten: a second take decodes again and still agrees.
    assert torch.equal(shared.take(wanted, layout, reference), expected)


def test_shared_stack_misses_on_another_reference_or_new_arrays():
    shared = fl.SharedStack()
    reference, other = _record(99), _record(98)
    records = [_record(i) for i in range(3)]
    layout = fl.Layout.of(reference)
    _, put = shared.begin(3, layout, reference)
    for i, record in enumerate(records):
        put(i, record)
    expected, _ = fl.stack(records, layout)
    got = shared.take(records, layout, other)
    assert torch.equal(got, expected - fl.flatten(other, layout))
    _, put = shared.begin(3, layout, reference)
    for i, record in enumerate(records):
        put(i, record)
    records[1]["w"] = Array(np.ones((3, 4), dtype=np.float32))  # a new Array: decoded again
    expected, _ = fl.stack(records, layout)
    again = shared.take(records, layout, reference)
    assert torch.equal(again, expected - fl.flatten(reference, layout))
    shared.release()


# ------------------------------------------------------------- validation → robust strategy


@pytest.mark.parametrize("rule", ["median", "krum"])
def test_validated_chain_decodes_each_reply_once_and_equals_the_plain_strategy(
    rule, make_reply, monkeypatch
):
    from strategies.robust import coordinate_median, krum
    from strategies.robust.strategy import RobustAggregation
    from strategies.round_state import RoundState, share_round_state
    from strategies.wrappers import SeededSampling, ValidatedUpdates

    rng = np.random.default_rng(1)
    base = {"w": rng.standard_normal((4, 5)).astype(np.float32), "b": np.zeros(3, np.float32)}
    reference = ArrayRecord({k: Array(v) for k, v in base.items()})

    def model(scale: float) -> dict[str, np.ndarray]:
        return {k: v + scale * rng.standard_normal(v.shape).astype(np.float32)
                for k, v in base.items()}  # fmt: skip

    good = [(i, model(0.1)) for i in (0, 1, 3, 4, 6, 7, 8)]
    poisoned = model(0.1)
    poisoned["w"][0, 0] = np.nan
    far = model(1000.0)  # dropped by the 10× norm-ratio check
    # Replies arrive out of partition order; partition 2 is NaN, partition 5 far away.
    entries = [*good[:2], (2, poisoned), *good[2:4], (5, far), *good[4:]]
    fn, params = (coordinate_median, {}) if rule == "median" else (krum, {"num_byzantine": 1})

    def replies():
        out = [make_reply(i, 100 + i, arrays) for i, arrays in entries]
        return out[::-1]

    plain = RobustAggregation(fn, rule_params=params)
    plain.round.begin(1, "train", reference)
    kept = sorted(
        (m for m in replies() if m.metadata.src_node_id not in (102, 105)),
        key=lambda m: m.metadata.src_node_id,
    )
    expected, _ = plain.aggregate_train(1, kept)

    decoded = []  # every copy of an array's values into a row
    real = fl._write
    monkeypatch.setattr(fl, "_write", lambda *args: decoded.append(args) or real(*args))
    robust = RobustAggregation(fn, rule_params=params)
    chain = ValidatedUpdates(SeededSampling(robust, 0, {}), max_norm_ratio=10.0)
    shared = RoundState()  # one round state for the chain, as wrap_strategy hands it
    share_round_state(chain, shared)
    shared.begin(1, "train", reference)
    arrays, metrics = chain.aggregate_train(1, replies())
    assert metrics["rejected-updates"] == 2
    for key in base:
        np.testing.assert_array_equal(arrays[key].numpy(), expected[key].numpy())
    # Copies: the reference (validation, strategy) and every reply once, nothing again.
    assert len(decoded) == len(base) * (len(entries) + 2)
