"""What secure aggregation costs: compute per silo and on the server, and upload size.

Every row runs in this one process on the same seeded float32 updates of ``d`` values from
``n`` silos (weights = example counts):

* **plain**: the server's example-weighted mean of the float32 updates (what FedAvg does);
  the baseline of every ratio.
* **silo: mask**: one silo's quantise + weight + self mask + ``n − 1`` pairwise masks
  (X25519 agreement, AES-CTR PRG), :func:`strategies.secagg.protocol.mask`.
* **silo: share**: Shamir-sharing two 32-byte secrets among ``n`` and sealing ``n − 1``
  share payloads (AES-GCM).
* **server: unmask**: reconstruct ``n`` self-mask seeds (and the dropped silos' keys) from
  t shares each, sum the masked vectors, remove the masks, dequantise; with 0 and 1
  dropped silo.

Each result is checked against the plain mean (within the quantisation bound) before any
number is printed. Times are the median of ``--reps`` repetitions.

Usage::

    python -m benchmarks.secagg              # n = 10, d = 10k / 100k / 1M
    python -m benchmarks.secagg --quick      # small sizes, smoke test
"""

from __future__ import annotations

import numpy as np

from benchmarks import harness
from benchmarks.harness import Column, Table, Versus
from strategies.secagg import protocol as P

CLIP, BITS = 4.0, 24
BASELINE = "plain weighted mean (server)"


def _median_time(fn, reps: int) -> float:
    return harness.repeat(fn, reps).median  # after one warm-up call


def run(n: int, d: int, reps: int) -> list[tuple[str, float]]:
    """Times (seconds) of each step for ``n`` silos and ``d`` values; checks correctness."""
    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 0.05, d).astype(np.float32) for _ in range(n)]
    weights = [int(w) for w in rng.integers(50, 500, n)]
    ids = list(range(1, n + 1))
    t = P.threshold_for(n, 0.6)
    keys = {u: P.new_keypair() for u in ids}
    seeds = {u: P.new_seed() for u in ids}
    ctx = b"round=1/bench"

    def plain():
        return sum(w * u.astype(np.float64) for w, u in zip(weights, updates, strict=True)) / sum(
            weights
        )

    def mask_one(u: int):
        q, _ = P.quantize(updates[u - 1], CLIP, BITS)
        pairs = {
            v: (P.agree(keys[u][0], keys[v][1], ctx), P.pair_sign(u, v)) for v in ids if v != u
        }
        return P.mask(q * np.uint64(weights[u - 1]), seeds[u], pairs)

    def share_one():
        sk = P.shamir_split(keys[1][0], n, t)
        b = P.shamir_split(seeds[1], n, t)
        for j in range(1, n):
            key = P.agree(keys[1][0], keys[j + 1][1], ctx + b"/enc")
            P.seal(key, P.pack_shares(1, j + 1, sk[j][1], b[j][1]), ctx)

    masked = {u: mask_one(u) for u in ids}
    seed_shares = {u: P.shamir_split(seeds[u], n, t) for u in ids}
    key_shares = {u: P.shamir_split(keys[u][0], n, t) for u in ids}

    def unmask(dropped: list[int]):
        survivors = [u for u in ids if u not in dropped]
        self_seeds = [P.shamir_reconstruct(seed_shares[u][:t], t) for u in survivors]
        pairs = []
        for v in dropped:
            sk_v = P.shamir_reconstruct(key_shares[v][:t], t)
            pairs += [(P.agree(sk_v, keys[u][1], ctx), P.pair_sign(u, v)) for u in survivors]
        total = P.unmask_sum([masked[u] for u in survivors], self_seeds, pairs)
        return P.dequantize_mean(total, sum(weights[u - 1] for u in survivors), CLIP, BITS)

    bound = P.quantization_error_bound(CLIP, BITS) + 1e-7
    assert np.abs(unmask([]) - plain()).max() <= bound
    survivors = ids[1:]
    expected = sum(weights[u - 1] * updates[u - 1].astype(np.float64) for u in survivors) / sum(
        weights[u - 1] for u in survivors
    )
    assert np.abs(unmask([1]) - expected).max() <= bound

    return [
        (BASELINE, _median_time(plain, reps)),
        ("silo: mask own update", _median_time(lambda: mask_one(1), reps)),
        ("silo: share + seal keys", _median_time(share_one, reps)),
        ("server: unmask, 0 dropped", _median_time(lambda: unmask([]), reps)),
        ("server: unmask, 1 dropped", _median_time(lambda: unmask([1]), reps)),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__, quick="small sizes (smoke test)", reps=5, allow_dirty=False)
    parser.add_argument("--silos", type=int, default=10)
    args = parser.parse_args(argv)
    sizes = [1_000, 10_000] if args.quick else [10_000, 100_000, 1_000_000]
    print(f"secure aggregation, n = {args.silos} silos, {BITS} bits, clip ±{CLIP}")
    table = Table(
        ["d", "step", Column("time [ms]", ".2f"),
         Column("× plain", versus=Versus("time [ms]", row=BASELINE, label="step", group="d",
                                         fmt=".1f"))],
        align="rlrr",
    )  # fmt: skip
    for d in sizes:
        for name, seconds in run(args.silos, d, args.reps):
            table.add(d, name, seconds * 1e3)
        table.add(d, f"upload bytes per silo (float32: {4 * d})", str(8 * d), 2.0)
    print(table.text())


if __name__ == "__main__":
    main()
