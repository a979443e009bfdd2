"""Pure secure-aggregation building blocks: quantisation, masks, Shamir, share sealing."""

import contextlib
import itertools

import numpy as np
import pytest

from strategies.secagg import protocol as P


def test_quantised_weighted_mean_is_within_the_error_bound():
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-2, 2, 1000) for _ in range(5)]
    weights = [3, 10, 1, 7, 50]
    total = np.zeros(1000, dtype=np.uint64)
    for x, w in zip(xs, weights, strict=True):
        q, clipped = P.quantize(x, 2.5, 16)
        assert clipped == 0
        total += q * np.uint64(w)
    mean = P.dequantize_mean(total, sum(weights), 2.5, 16)
    exact = sum(w * x for x, w in zip(xs, weights, strict=True)) / sum(weights)
    bound = P.quantization_error_bound(2.5, 16)
    assert np.abs(mean - exact).max() <= bound * (1 + 1e-9)
    assert np.abs(mean - exact).max() > bound / 100  # the bound is not vacuous


def test_quantize_clips_and_counts():
    q, clipped = P.quantize(np.array([-5.0, 0.0, 5.0]), 1.0, 8)
    assert clipped == 2
    assert q.tolist() == [0, 128, 255]
    with pytest.raises(P.SecAggError, match="bits"):
        P.quantize(np.zeros(2), 1.0, 40)


def test_masks_cancel_in_the_sum_and_hide_each_input():
    rng = np.random.default_rng(1)
    ids = [11, 22, 33, 44]
    inputs = {u: rng.integers(0, 2**20, 4096, dtype=np.uint64) for u in ids}
    keys = {u: P.new_keypair() for u in ids}
    seeds = {u: P.new_seed() for u in ids}
    ctx = b"round=1/test"
    masked = {}
    for u in ids:
        pairs = {
            v: (P.agree(keys[u][0], keys[v][1], ctx), P.pair_sign(u, v)) for v in ids if v != u
        }
        masked[u] = P.mask(inputs[u], seeds[u], pairs)
    # One masked input looks uniform on the ring and is uncorrelated with the input.
    y = masked[22].astype(np.float64)
    assert abs(np.corrcoef(y, inputs[22].astype(np.float64))[0, 1]) < 0.1
    assert y.mean() > 2.0**62  # inputs are < 2^20; masked values spread over [0, 2^64)
    total = P.unmask_sum(list(masked.values()), [seeds[u] for u in ids], [])
    assert np.array_equal(total, sum(inputs.values()))


def test_unmask_with_a_dropped_node_via_its_reconstructed_key():
    rng = np.random.default_rng(2)
    ids = [1, 2, 3, 4, 5]
    inputs = {u: rng.integers(0, 2**16, 512, dtype=np.uint64) for u in ids}
    keys = {u: P.new_keypair() for u in ids}
    seeds = {u: P.new_seed() for u in ids}
    ctx = b"round=7/x"
    t = P.threshold_for(len(ids), 0.6)
    shares = {u: P.shamir_split(keys[u][0], len(ids), t) for u in ids}
    masked = {
        u: P.mask(
            inputs[u],
            seeds[u],
            {v: (P.agree(keys[u][0], keys[v][1], ctx), P.pair_sign(u, v)) for v in ids if v != u},
        )
        for u in ids
    }
    dropped, survivors = 4, [1, 2, 3, 5]
    key_4 = P.shamir_reconstruct(shares[dropped][:t], t)
    assert key_4 == keys[dropped][0]
    pairs = [(P.agree(key_4, keys[u][1], ctx), P.pair_sign(u, dropped)) for u in survivors]
    total = P.unmask_sum([masked[u] for u in survivors], [seeds[u] for u in survivors], pairs)
    assert np.array_equal(total, sum(inputs[u] for u in survivors))


def test_shamir_any_t_shares_reconstruct_fewer_do_not():
    secret = P.new_seed()
    shares = P.shamir_split(secret, 6, 4)
    for subset in itertools.combinations(shares, 4):
        assert P.shamir_reconstruct(subset, 4) == secret
    with pytest.raises(P.SecAggError, match="cannot reconstruct"):
        P.shamir_reconstruct(shares[:3], 4)
    # Three shares plus a forged fourth give garbage, not the secret.
    forged = (shares[3][0], (int.from_bytes(shares[3][1], "big") ^ 1).to_bytes(66, "big"))
    with contextlib.suppress(P.SecAggError):  # out of range is also "not the secret"
        assert P.shamir_reconstruct([*shares[:3], forged], 4) != secret
    with pytest.raises(P.SecAggError, match="threshold"):
        P.shamir_split(secret, 3, 4)


def test_sealed_shares_detect_tampering_and_misrouting():
    a, b, c = P.new_keypair(), P.new_keypair(), P.new_keypair()
    k_ab = P.agree(a[0], b[1], b"r/enc")
    assert k_ab == P.agree(b[0], a[1], b"r/enc")
    payload = P.pack_shares(1, 2, b"\x01" * 66, b"\x02" * 66)
    sealed = P.seal(k_ab, payload, b"r")
    assert P.unpack_shares(P.open_sealed(k_ab, sealed, b"r")) == (1, 2, b"\x01" * 66, b"\x02" * 66)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(P.SecAggError, match="authentication"):
        P.open_sealed(k_ab, tampered, b"r")
    with pytest.raises(P.SecAggError, match="authentication"):
        P.open_sealed(P.agree(c[0], b[1], b"r/enc"), sealed, b"r")  # wrong recipient key
    with pytest.raises(P.SecAggError, match="authentication"):
        P.open_sealed(k_ab, sealed, b"another round")


def test_threshold_and_ring_capacity():
    assert [P.threshold_for(n, 0.6) for n in (2, 3, 4, 5, 10)] == [2, 2, 3, 3, 6]
    assert P.max_weight_sum(24) >= 2**40  # ~10^12 examples per round at 24 bits
    assert len(P.prg(b"\x00" * 32, 10)) == 10
    assert np.array_equal(P.prg(b"\x07" * 32, 50), P.prg(b"\x07" * 32, 50))
