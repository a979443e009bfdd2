"""Property tests of the pure compression codecs (strategies/compression/codecs.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.compression.codecs import (
    CompressionSection,
    CompressionSpec,
    advance_estimate,
    chunk_ids,
    decode,
    dequantize,
    ef21_step,
    encode,
    error_feedback_step,
    pack_nibbles,
    pack_payload,
    quantize,
    unpack_nibbles,
    unpack_payload,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _offsets(sizes: list[int]) -> list[int]:
    return [0, *np.cumsum(sizes).tolist()]


def _chunk_steps(x: torch.Tensor, offsets, chunk: int, bits: int) -> torch.Tensor:
    """The level step of every element's chunk, computed independently."""
    ids, n = chunk_ids(offsets, chunk)
    steps = torch.empty(n)
    for c in range(n):
        values = x[ids == c]
        steps[c] = (values.max() - values.min()) / ((1 << bits) - 1)
    return steps[ids]


sizes_strategy = st.lists(st.integers(1, 300), min_size=1, max_size=5)


@settings(max_examples=25, deadline=None)
@given(sizes=sizes_strategy, chunk=st.sampled_from([0, 1, 7, 64]), seed=st.integers(0, 2**31 - 1))
@pytest.mark.parametrize("scheme,bits", [("int8", 8), ("int4", 4)])
def test_quantisation_error_below_one_level(scheme, bits, sizes, chunk, seed):
    offsets = _offsets(sizes)
    x = torch.randn(offsets[-1], generator=_gen(seed)) * torch.rand(1, generator=_gen(seed)) * 10
    arrays, meta = encode(x, offsets, CompressionSpec(scheme, chunk=chunk), _gen(seed))
    assert set(arrays) == {"codes", "lo", "step"}
    assert arrays["codes"].dtype == np.uint8
    assert arrays["codes"].size == (offsets[-1] if bits == 8 else math.ceil(offsets[-1] / 2))
    y = decode(arrays, meta, offsets)
    step = _chunk_steps(x, offsets, chunk, bits)
    assert ((y - x).abs() <= step * (1 + 1e-4) + 1e-6).all()


@pytest.mark.parametrize("bits", [8, 4])
def test_quantisation_is_unbiased(bits):
    """Mean of many independent quantisations converges to x: |mean − x| within 5
    standard errors of the worst-case variance step²/4. The trials run as one batch
    (each copy of x is its own set of chunks, with its own random draws)."""
    offsets = [0, 50, 250, 256]
    x = torch.randn(256, generator=_gen(1))
    ids, n = chunk_ids(offsets, 32)
    trials = 4000
    batch_ids = (ids[None, :] + n * torch.arange(trials)[:, None]).reshape(-1)
    codes, lo, step = quantize(x.repeat(trials), bits, batch_ids, n * trials, _gen(5))
    decoded = dequantize(codes, lo, step, batch_ids).view(trials, -1).double()
    mean = decoded.mean(0).float()
    worst_step = float(step.max())
    tolerance = 5 * (worst_step / 2) / math.sqrt(trials)
    assert (mean - x).abs().max() <= tolerance
    # each draw really is random: single decodes differ from each other
    assert not torch.equal(decoded[0], decoded[1])


def test_encode_of_topk_int8_is_unbiased_on_kept_values():
    offsets = [0, 100, 300]
    x = torch.randn(300, generator=_gen(2))
    spec = CompressionSpec("topk+int8", topk_fraction=0.2, chunk=16)
    runs = torch.stack(
        [decode(*encode(x, offsets, spec, _gen(t)), offsets) for t in range(400)]
    ).double()
    kept = runs[0] != 0
    assert int(kept.sum()) == 20 + 40
    errors = (runs.mean(0).float() - x)[kept].abs()
    assert errors.max() <= 5 * (float(x.max() - x.min()) / 255 / 2) / math.sqrt(400)


@settings(max_examples=25, deadline=None)
@given(sizes=sizes_strategy, fraction=st.floats(0.001, 1.0), seed=st.integers(0, 1000))
def test_topk_keeps_exactly_the_largest_per_tensor(sizes, fraction, seed):
    offsets = _offsets(sizes)
    x = torch.randn(offsets[-1], generator=_gen(seed))
    spec = CompressionSpec("topk", topk_fraction=fraction, topk_scope="tensor")
    arrays, meta = encode(x, offsets, spec, _gen())
    y = decode(arrays, meta, offsets)
    for start, end in itertools.pairwise(offsets):
        seg_x, seg_y = x[start:end], y[start:end]
        k = max(1, math.ceil(fraction * (end - start)))
        kept = seg_y != 0
        assert int(kept.sum()) == k
        assert torch.equal(seg_y[kept], seg_x[kept])  # float32 values travel exactly
        if k < end - start:  # nothing dropped is larger than anything kept
            assert seg_x[~kept].abs().max() <= seg_x[kept].abs().min()


@settings(max_examples=25, deadline=None)
@given(sizes=sizes_strategy, fraction=st.floats(0.001, 1.0), seed=st.integers(0, 1000))
def test_global_topk_keeps_exactly_the_largest_of_the_whole_update(sizes, fraction, seed):
    offsets = _offsets(sizes)
    d = offsets[-1]
    # tensors on very different scales: a global budget goes where the magnitude is
    x = torch.cat([torch.randn(n, generator=_gen(seed + i)) * 10.0**i for i, n in enumerate(sizes)])
    arrays, meta = encode(x, offsets, CompressionSpec("topk", topk_fraction=fraction), _gen())
    y = decode(arrays, meta, offsets)
    kept = y != 0
    assert int(kept.sum()) == min(d, max(1, math.ceil(fraction * d)))
    assert torch.equal(y[kept], x[kept])
    if int(kept.sum()) < d:
        assert x[~kept].abs().max() <= x[kept].abs().min()


def test_encoding_is_seeded():
    x = torch.randn(500, generator=_gen(3))
    spec = CompressionSpec("int4", chunk=64)
    a1, _ = encode(x, [0, 500], spec, _gen(11))
    a2, _ = encode(x, [0, 500], spec, _gen(11))
    a3, _ = encode(x, [0, 500], spec, _gen(12))
    assert np.array_equal(a1["codes"], a2["codes"])
    assert not np.array_equal(a1["codes"], a3["codes"])


def test_none_is_lossless_and_constant_chunks_decode_exactly():
    offsets = [0, 10, 30]
    x = torch.cat([torch.full((10,), 0.25), torch.randn(20, generator=_gen())])
    arrays, meta = encode(x, offsets, CompressionSpec("none"), _gen())
    assert torch.equal(decode(arrays, meta, offsets), x)
    arrays, meta = encode(x, offsets, CompressionSpec("int8", chunk=0), _gen())
    assert torch.equal(decode(arrays, meta, offsets)[:10], x[:10])


@settings(max_examples=25, deadline=None)
@given(codes=st.lists(st.integers(0, 15), min_size=0, max_size=99))
def test_nibble_packing_round_trips(codes):
    t = torch.tensor(codes, dtype=torch.uint8)
    packed = pack_nibbles(t)
    assert packed.numel() == math.ceil(len(codes) / 2)
    assert torch.equal(unpack_nibbles(packed, len(codes)), t)


@pytest.mark.parametrize("scheme", ["topk", "topk+int8", "int4"])
def test_error_feedback_loses_nothing_only_delays(scheme):
    """Σ sent + final residual = Σ updates (telescoping), and the residual stays
    bounded, so every coordinate is eventually transmitted."""
    offsets = [0, 40, 200]
    spec = CompressionSpec(scheme, topk_fraction=0.05, chunk=16)
    drift = torch.randn(200, generator=_gen(49))  # a consistent direction, as in training
    updates = [drift + torch.randn(200, generator=_gen(50 + t)) for t in range(60)]
    residual, sent_total = None, torch.zeros(200, dtype=torch.float64)
    norms = []
    for t, update in enumerate(updates):
        arrays, meta, residual = error_feedback_step(update, residual, offsets, spec, _gen(t))
        sent_total += decode(arrays, meta, offsets).double()
        norms.append(float(residual.norm()))
    truth = torch.stack(updates).double().sum(0)
    assert torch.allclose(sent_total + residual.double(), truth, atol=1e-4)
    # bounded: the residual does not grow with the number of rounds
    assert max(norms[30:]) < 3 * max(norms[:30]) + 1e-6
    # without feedback, top-k would lose most of the mass for good
    if scheme.startswith("topk"):
        dropped = sum(
            (u - decode(*encode(u, offsets, spec, _gen()), offsets)).double() for u in updates
        )
        assert dropped.norm() > 3 * residual.norm()


@pytest.mark.parametrize("scheme", ["topk", "topk+int8"])
def test_ef21_silo_and_server_estimates_are_bit_identical_and_contract(scheme):
    """EF21 bookkeeping: the silo's new estimate is exactly what the server rebuilds
    from the payload (estimate + decoded), and for float32 top-k the tracking error
    contracts: ‖u − g_new‖² ≤ (1 − k/d)·‖u − g‖²."""
    offsets = [0, 40, 200, 1000]
    spec = CompressionSpec(scheme, topk_fraction=0.05, chunk=16)
    k = math.ceil(0.05 * 1000)
    client = server = None
    drift = torch.randn(1000, generator=_gen(7))
    for t in range(30):
        update = drift + 0.3 * torch.randn(1000, generator=_gen(100 + t))
        arrays, meta, new = ef21_step(update, client, offsets, spec, _gen(t))
        parts, meta2 = unpack_payload(pack_payload(arrays, meta))
        sent = decode(parts, meta2, offsets)
        server = advance_estimate(torch.zeros(1000) if server is None else server, sent)
        assert torch.equal(new, server)  # bit-identical copies
        if scheme == "topk":
            before = (update - (torch.zeros(1000) if client is None else client)).double()
            after = (update - new).double()
            assert after.norm() ** 2 <= (1 - k / 1000) * before.norm() ** 2 + 1e-6
            assert int((sent != 0).sum()) == k
        client = new


def test_ef21_never_counts_a_repeated_update_twice():
    """The stale-residual problem of the classic residual: a silo that sends the same
    update every round (it re-learns it from a global model that barely moved) sees
    its residual, and what it sends, grow with the rounds. EF21's estimate converges to
    the update itself and never exceeds it."""
    offsets = [0, 100, 500]
    spec = CompressionSpec("topk", topk_fraction=0.01)
    update = torch.randn(500, generator=_gen(3))
    residual, estimate = None, None
    for t in range(100):
        _, _, residual = error_feedback_step(update, residual, offsets, spec, _gen(t))
        _, _, estimate = ef21_step(update, estimate, offsets, spec, _gen(t))
        assert (estimate.abs() <= update.abs()).all()  # each entry is 0 or the update's
    assert torch.equal(estimate, update)  # 100 rounds × 5 values cover all 500
    assert residual.norm() > 10 * update.norm()  # the classic residual piles up


def test_payload_round_trip_and_entropy_coding():
    arrays = {
        "indices": np.arange(0, 3000, 3, dtype=np.uint16),
        "codes": np.full(5000, 128, dtype=np.uint8),
        "lo": np.array([-1.5, 2.0], dtype=np.float32),
    }
    meta = {"scheme": "topk+int8", "chunk": 1024, "numel": 3000}
    raw = pack_payload(arrays, meta, entropy_coding=False)
    packed = pack_payload(arrays, meta)
    assert len(packed) < len(raw) / 3  # regular indices, constant codes: deflate well
    for blob in (raw, packed):
        back, meta_back = unpack_payload(blob)
        assert meta_back == meta
        for name, a in arrays.items():
            assert back[name].dtype == a.dtype and np.array_equal(back[name], a)


@pytest.mark.parametrize(
    "blob", [b"", b"XXXX\x00\x00\x00\x00\x00", b"FSC1\x00\x05\x00\x00\x00{bad}", b"FSC1\x01"]
)
def test_malformed_payload_is_a_value_error(blob):
    with pytest.raises(ValueError):
        unpack_payload(blob)


def test_decode_rejects_mismatched_model():
    x = torch.randn(100, generator=_gen())
    arrays, meta = encode(x, [0, 100], CompressionSpec("int8"), _gen())
    with pytest.raises(ValueError, match="100 values"):
        decode(arrays, meta, [0, 50])
    arrays, meta = encode(x, [0, 100], CompressionSpec("topk", topk_fraction=0.1), _gen())
    arrays["indices"] = arrays["indices"][::-1].copy()
    with pytest.raises(ValueError, match="increasing"):
        decode(arrays, meta, [0, 100])


def test_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="not one of"):
        CompressionSpec("int2")
    with pytest.raises(ValueError, match=r"compression.topk-scope 'layer'"):
        CompressionSpec("topk", topk_scope="layer")
    with pytest.raises(ValueError, match=r"compression.topk-fraction"):
        CompressionSpec("topk", topk_fraction=0.0)


def test_topk_warmup_rounds_use_the_warmup_codec_then_topk():
    section = CompressionSection(method="topk+int8", topk_warmup_rounds=2,
                                 topk_warmup_method="int8", topk_fraction=0.05)  # fmt: skip
    specs = {rnd: section.round_spec(rnd) for rnd in (0, 1, 2, 3, 20)}
    assert [specs[r][1] for r in (0, 1, 2, 3, 20)] == [False, True, True, False, False]
    assert specs[1][0] == specs[2][0] == CompressionSpec("int8", 0.05, 1024, "model")
    assert specs[3][0] == specs[0][0] == CompressionSpec("topk+int8", 0.05, 1024, "model")
    assert not specs[1][0].sparse and specs[3][0].sparse
    # Quantisation methods have no warm-up: the key is top-k's only.
    int4 = CompressionSection(method="int4", topk_warmup_rounds=5)
    assert int4.round_spec(1) == (CompressionSpec("int4", 0.01, 1024, "model"), False)
    # The default: three dense int4 rounds before top-k.
    default = CompressionSection(method="topk")
    assert [default.round_spec(r)[0].scheme for r in (1, 3, 4)] == ["int4", "int4", "topk"]
