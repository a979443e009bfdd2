"""The pure parts of secure aggregation (SecAgg, Bonawitz et al., CCS 2017; the
"SecAgg+" variant of Bell et al., CCS 2020 uses the same building blocks on a sparse graph).

Each function here is deterministic given its inputs (randomness is passed in or drawn
from the OS for key material only) and testable alone:

* fixed-point quantisation of an update into the ring Z_{2^64} (:func:`quantize`,
  :func:`dequantize_mean`),
* a cryptographic PRG expanding a 32-byte seed into ring elements (:func:`prg`,
  AES-256-CTR),
* X25519 key agreement into a 32-byte seed (:func:`agree`, ECDH + HKDF-SHA256),
* pairwise and self masks (:func:`mask`, :func:`unmask_sum`),
* Shamir secret sharing of 32-byte secrets over GF(2^521 − 1) (:func:`shamir_split`,
  :func:`shamir_reconstruct`),
* authenticated encryption of the shares relayed through the server (:func:`seal`,
  :func:`open_sealed`, AES-256-GCM under an ECDH-agreed key).

All ring arithmetic is ``uint64`` with numpy's wrap-around, i.e. exactly mod 2^64.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

RING_BITS = 64
FIELD_PRIME = (1 << 521) - 1  # Mersenne prime: Shamir field for 32-byte secrets
SECRET_BYTES = 32
_SHARE_BYTES = 66  # ceil(521 / 8)


class SecAggError(ValueError):
    """A secure-aggregation message or parameter is invalid."""


# ----------------------------------------------------------------- quantisation
def max_weight_sum(bits: int) -> int:
    """Largest total weight Σ n_u for which Σ n_u · q_u cannot wrap around the ring."""
    return ((1 << RING_BITS) - 1) // ((1 << bits) - 1)


def quantize(values: np.ndarray, clip_range: float, bits: int) -> tuple[np.ndarray, int]:
    """Map ``values`` clipped to [−clip_range, clip_range] to integers in [0, 2^bits − 1]
    (round to nearest); returns ``(uint64 array, number of clipped values)``."""
    if not 1 <= bits <= 32:
        raise SecAggError(f"quantisation bits = {bits}: use 1…32")
    if not clip_range > 0:
        raise SecAggError(f"clip range = {clip_range}: must be > 0")
    x = np.asarray(values, dtype=np.float64)
    clipped = int(np.count_nonzero(np.abs(x) > clip_range))
    scale = ((1 << bits) - 1) / (2.0 * clip_range)
    q = np.rint((np.clip(x, -clip_range, clip_range) + clip_range) * scale)
    return q.astype(np.uint64), clipped


def dequantize_mean(total: np.ndarray, weight_sum: int, clip_range: float, bits: int):
    """Invert :func:`quantize` on Σ_u n_u · q_u: returns the weighted mean Σ n_u x̃_u / Σ n_u
    (float64), where x̃_u is u's quantised value (error ≤ clip_range / (2^bits − 1))."""
    if weight_sum <= 0:
        raise SecAggError(f"total weight = {weight_sum}: must be > 0")
    scale = (2.0 * clip_range) / ((1 << bits) - 1)
    return np.asarray(total, dtype=np.uint64).astype(np.float64) / weight_sum * scale - clip_range


def quantization_error_bound(clip_range: float, bits: int) -> float:
    """Worst-case |dequantised mean − true mean| per coordinate for unclipped inputs."""
    return clip_range / ((1 << bits) - 1)


# ----------------------------------------------------------------- PRG and keys
def prg(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random ring elements (uint64) from a 32-byte seed (AES-256-CTR)."""
    if len(seed) != SECRET_BYTES:
        raise SecAggError(f"PRG seed must be {SECRET_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(b"\x00" * 16)).encryptor()
    stream = encryptor.update(b"\x00" * (8 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def new_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw ``(private, public)`` bytes (32 each)."""
    sk = X25519PrivateKey.generate()
    return (
        sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
        sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
    )


def new_seed() -> bytes:
    """A fresh 32-byte self-mask seed from the OS."""
    return os.urandom(SECRET_BYTES)


def agree(private: bytes, peer_public: bytes, context: bytes) -> bytes:
    """32-byte secret shared by the two key owners: HKDF-SHA256(X25519(private, peer)),
    bound to ``context`` (e.g. run and round)."""
    if len(peer_public) != 32 or len(private) != 32:
        raise SecAggError("X25519 keys must be 32 bytes")
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public)
    )
    return HKDF(hashes.SHA256(), SECRET_BYTES, salt=None, info=b"fedsilo-secagg/" + context).derive(
        shared
    )


# ----------------------------------------------------------------- masking
def pair_sign(own_id: int, peer_id: int) -> int:
    """+1 if ``own_id`` adds the pair's mask, −1 if it subtracts it (the smaller id adds)."""
    if own_id == peer_id:
        raise SecAggError(f"a node cannot share a pairwise mask with itself ({own_id})")
    return 1 if own_id < peer_id else -1


def mask(
    quantized: np.ndarray,
    self_seed: bytes,
    pair_seeds: Mapping[int, tuple[bytes, int]],
) -> np.ndarray:
    """``quantized + PRG(self_seed) + Σ_v sign_v · PRG(seed_v)`` in Z_{2^64}.

    ``pair_seeds`` maps each peer to ``(agreed seed, sign)`` (see :func:`pair_sign`).
    """
    y = np.asarray(quantized, dtype=np.uint64).copy()
    n = y.size
    y += prg(self_seed, n)
    for seed, sign in pair_seeds.values():
        if sign > 0:
            y += prg(seed, n)
        else:
            y -= prg(seed, n)
    return y


def unmask_sum(
    masked: Sequence[np.ndarray],
    self_seeds: Sequence[bytes],
    dropped_pair_seeds: Sequence[tuple[bytes, int]],
) -> np.ndarray:
    """Σ masked − Σ PRG(self seeds of the survivors) − the survivors' masks shared with
    dropped nodes (``(seed, sign)`` as the survivor applied it). Pairwise masks between
    survivors cancel in the sum. Returns Σ_u n_u · q_u in Z_{2^64}."""
    if not masked:
        raise SecAggError("no masked input to unmask")
    total = np.zeros(masked[0].size, dtype=np.uint64)
    for y in masked:
        if y.size != total.size:
            raise SecAggError(f"masked inputs differ in length ({y.size} vs {total.size})")
        total += y
    for seed in self_seeds:
        total -= prg(seed, total.size)
    for seed, sign in dropped_pair_seeds:
        if sign > 0:
            total -= prg(seed, total.size)
        else:
            total += prg(seed, total.size)
    return total


# ----------------------------------------------------------------- Shamir
def _to_int(secret: bytes) -> int:
    if len(secret) != SECRET_BYTES:
        raise SecAggError(f"a secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    return int.from_bytes(secret, "big")


def shamir_split(secret: bytes, num_shares: int, threshold: int) -> list[tuple[int, bytes]]:
    """Split a 32-byte secret into ``num_shares`` shares ``(x, y)`` with x = 1…n; any
    ``threshold`` of them reconstruct it, fewer reveal nothing."""
    if not 2 <= threshold <= num_shares:
        raise SecAggError(f"threshold {threshold} must be in 2…{num_shares} (number of shares)")
    coeffs = [_to_int(secret)] + [secrets.randbelow(FIELD_PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in range(1, num_shares + 1):
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % FIELD_PRIME
        shares.append((x, y.to_bytes(_SHARE_BYTES, "big")))
    return shares


def shamir_reconstruct(shares: Sequence[tuple[int, bytes]], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (Lagrange interpolation at 0)."""
    points = {int(x): int.from_bytes(y, "big") for x, y in shares}
    if len(points) < threshold:
        raise SecAggError(
            f"{len(points)} distinct shares cannot reconstruct a secret of threshold {threshold}"
        )
    chosen = sorted(points.items())[:threshold]
    secret = 0
    for i, (xi, yi) in enumerate(chosen):
        num, den = 1, 1
        for j, (xj, _) in enumerate(chosen):
            if i != j:
                num = num * (-xj) % FIELD_PRIME
                den = den * (xi - xj) % FIELD_PRIME
        secret = (secret + yi * num * pow(den, -1, FIELD_PRIME)) % FIELD_PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise SecAggError("shares are inconsistent (reconstructed value out of range)")
    return secret.to_bytes(SECRET_BYTES, "big")


def threshold_for(num_nodes: int, fraction: float) -> int:
    """Shamir threshold t = max(2, ⌈fraction · n⌉), at most n."""
    import math

    return min(num_nodes, max(2, math.ceil(fraction * num_nodes - 1e-9)))


# ----------------------------------------------------------------- share encryption
def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM encrypt (random 12-byte nonce prepended)."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """Decrypt :func:`seal`'s output; raises :class:`SecAggError` if it was tampered with."""
    from cryptography.exceptions import InvalidTag

    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], associated)
    except (InvalidTag, ValueError) as exc:
        raise SecAggError("a relayed share failed authentication (tampered or misrouted)") from exc


def pack_shares(src: int, dst: int, share_sk: bytes, share_seed: bytes) -> bytes:
    """Plaintext of the shares ``src`` sends ``dst``: both ids and both 66-byte shares."""
    return src.to_bytes(8, "big") + dst.to_bytes(8, "big") + share_sk + share_seed


def unpack_shares(blob: bytes) -> tuple[int, int, bytes, bytes]:
    """Inverse of :func:`pack_shares`."""
    if len(blob) != 16 + 2 * _SHARE_BYTES:
        raise SecAggError(f"share payload has {len(blob)} bytes, expected {16 + 2 * _SHARE_BYTES}")
    src, dst = int.from_bytes(blob[:8], "big"), int.from_bytes(blob[8:16], "big")
    return src, dst, blob[16 : 16 + _SHARE_BYTES], blob[16 + _SHARE_BYTES :]
