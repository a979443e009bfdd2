"""Private set intersection (PSI) of record ids by commutative Diffie–Hellman on X25519.

The classic DH-PSI (Meadows 1986; Huberman, Franklin & Hogg 1999; the protocol behind
Google's Private Join and Compute), here between the label party L (ids ``X``) and each
feature party P (ids ``Y``), with secret scalars ``a`` (L) and ``b`` (P):

1. L sends ``{H(x)^a : x ∈ X}`` in a secret random order.
2. P answers ``{(H(x)^a)^b}`` in the order received, and ``{H(y)^b : y ∈ Y}`` in its own
   secret random order.
3. L raises P's values to ``a`` and matches ``H(y)^{ba}`` against ``H(x)^{ab}``: it learns
   which of its records P also holds and at which (shuffled) position of P's list.
4. Over all feature parties L keeps the records everybody holds, numbers them in a seeded
   random order (the aligned index), and tells each party only the shuffled positions of
   its own records that are aligned, with their aligned index.

Group: "H(x)^a" is X25519 (RFC 7748): ``H(x)`` is SHA-512 of a domain tag and the id,
truncated to a 32-byte Montgomery u-coordinate, and ``X25519(a, u)`` is the u-coordinate
of ``[a]·P``. The Montgomery ladder is x-only and works for points of the curve and of its
quadratic twist alike, and scalar multiplication commutes (``[a][b]P = [b][a]P``), so
``X25519(a, X25519(b, u)) = X25519(b, X25519(a, u))``. Curve25519 is twist-secure (both
orders are 8 or 4 times a ~2^252 prime), so hashing straight onto the u-line instead of a
full hash-to-curve (Elligator 2) keeps the discrete-log / DDH hardness the protocol's
security rests on; clamping clears the cofactor. Secret scalars come from the OS RNG
(``X25519PrivateKey.generate``), never from the run seed.

What each side learns (semi-honest parties, no collusion): L learns the ids it shares
with each feature party (pairwise intersections, as its own ids) and each party's set
size; a feature party learns ``|X|`` and which of its own records are in the final
intersection, nothing about ids it does not hold. Nobody sees another party's raw ids or
ids outside the intersection. Intersection sizes are leaked by design.
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

POINT_BYTES = 32
DOMAIN = b"fedsilo-vertical-psi-v1/"


class PSIError(ValueError):
    """The PSI inputs or replies are malformed."""


def hash_to_u(record_id: str) -> bytes:
    """The id hashed onto the X25519 u-line (32 bytes; RFC 7748 masks the top bit)."""
    digest = bytearray(hashlib.sha512(DOMAIN + record_id.encode("utf-8")).digest()[:POINT_BYTES])
    digest[31] &= 0x7F
    return bytes(digest)


class PSIKey:
    """A party's secret exponent; ``blind`` hashes ids and exponentiates, ``reblind``
    exponentiates already-blinded points."""

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        self._key = private or X25519PrivateKey.generate()

    @classmethod
    def from_bytes(cls, raw: bytes) -> PSIKey:
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def to_bytes(self) -> bytes:
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def _power(self, u: bytes) -> bytes:
        try:
            return self._key.exchange(X25519PublicKey.from_public_bytes(u))
        except ValueError as exc:  # a low-order point: never from honest hashed input
            raise PSIError(f"PSI point of low order rejected ({exc})") from None

    def blind(self, ids: list[str]) -> np.ndarray:
        """``H(id)^k`` for every id, as an (n × 32) uint8 array."""
        return to_array([self._power(hash_to_u(i)) for i in ids])

    def reblind(self, points: np.ndarray) -> np.ndarray:
        """``p^k`` for every row of an (n × 32) uint8 array."""
        check_points(points, "points to re-blind")
        return to_array([self._power(row.tobytes()) for row in points])


def to_array(points: list[bytes]) -> np.ndarray:
    """Points as one (n × 32) uint8 array (how they travel in an ArrayRecord)."""
    if not points:
        return np.zeros((0, POINT_BYTES), dtype=np.uint8)
    return np.frombuffer(b"".join(points), dtype=np.uint8).reshape(-1, POINT_BYTES).copy()


def check_points(points: np.ndarray, what: str) -> None:
    """Raise :class:`PSIError` unless ``points`` is an (n × 32) uint8 array."""
    if points.dtype != np.uint8 or points.ndim != 2 or points.shape[1] != POINT_BYTES:
        raise PSIError(
            f"{what}: expected an (n × {POINT_BYTES}) uint8 array, got {points.dtype} "
            f"{tuple(points.shape)}"
        )


def secret_permutation(n: int) -> np.ndarray:
    """A permutation from the OS RNG (hides a party's own row order)."""
    return np.random.default_rng(np.random.SeedSequence()).permutation(n)


# ----------------------------------------------------------------- protocol steps
def label_round1(ids: list[str], key: PSIKey) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 at L: ``(blinded ids in a secret order, order)``; ``order[j]`` is the row of
    L's ``ids`` behind position ``j``."""
    order = secret_permutation(len(ids))
    return key.blind([ids[i] for i in order]), order


def party_respond(
    received: np.ndarray, ids: list[str], key: PSIKey
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 2 at P: ``(L's points re-blinded in received order, P's blinded ids in a
    secret order, that order)``."""
    order = secret_permutation(len(ids))
    return key.reblind(received), key.blind([ids[i] for i in order]), order


def label_match(
    double: np.ndarray, label_order: np.ndarray, party_points: np.ndarray, key: PSIKey
) -> dict[int, int]:
    """Step 3 at L: ``{L row: P's shuffled position}`` for the records both hold."""
    check_points(double, "double-blinded points")
    check_points(party_points, "party's blinded ids")
    if len(double) != len(label_order):
        raise PSIError(f"party re-blinded {len(double)} points but {len(label_order)} were sent")
    mine = {row.tobytes(): int(label_order[j]) for j, row in enumerate(double)}
    theirs = key.reblind(party_points)
    return {mine[p.tobytes()]: j for j, p in enumerate(theirs) if p.tobytes() in mine}


def align(matches: list[dict[int, int]], seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Step 4 at L: the records every party holds. Returns ``(label_rows,
    [positions_p])``: aligned index ``k`` is L's row ``label_rows[k]`` and position
    ``positions_p[k]`` in party p's shuffled list. The order is a seeded permutation, so
    the same data and seed give the same alignment (and the same model)."""
    common = set(matches[0]) if matches else set()
    for m in matches[1:]:
        common &= set(m)
    rows = np.array(sorted(common), dtype=np.int64)
    rows = rows[np.random.default_rng(seed).permutation(len(rows))]
    return rows, [np.array([m[int(r)] for r in rows], dtype=np.int64) for m in matches]


def private_intersection(
    label_ids: list[str], party_ids: list[list[str]], seed: int = 0
) -> tuple[list[str], list[list[str]]]:
    """The whole protocol in one process (tests, benchmarks): the aligned ids as the
    label party sees them and, per party, as that party resolves them from its own list
    — equal lists when the protocol is correct."""
    key = PSIKey()
    sent, label_order = label_round1(label_ids, key)
    matches, party_orders = [], []
    for ids in party_ids:
        party_key = PSIKey()
        double, theirs, order = party_respond(sent, ids, party_key)
        matches.append(label_match(double, label_order, theirs, key))
        party_orders.append(order)
    rows, positions = align(matches, seed)
    label_view = [label_ids[r] for r in rows]
    party_views = [
        [ids[order[j]] for j in pos]
        for ids, order, pos in zip(party_ids, party_orders, positions, strict=True)
    ]
    return label_view, party_views
