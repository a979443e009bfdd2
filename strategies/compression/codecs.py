"""Update compression as pure, seeded functions on one flat float32 vector.

An update is the model DELTA (new weights − received global weights) of the float
tensors, flattened into one vector ``x`` of length ``d``; ``offsets`` mark where each
tensor starts (``offsets[-1] == d``). Every codec keeps tensor boundaries: scales and
top-k budgets are per tensor (or per ``chunk`` elements inside a tensor), so a layer
with small weights is not drowned by a layer with large ones.

* **Stochastic uniform quantisation** (QSGD-style, Alistarh et al., 2017, with a
  min–max range per chunk as in Suresh et al., 2017): each value is mapped to one of
  ``2**bits`` levels between its chunk's min and max and rounded up with probability
  equal to its distance from the lower level, so ``E[decode(encode(x))] = x``
  (unbiased) and the error per coordinate is below one level step.
  ``int8`` stores one byte per value, ``int4`` packs two values per byte.
* **Top-k sparsification** (Stich et al., 2018; Lin et al., 2018 "Deep Gradient
  Compression"): keep the ``ceil(fraction · d)`` largest-magnitude values of the whole
  update (``topk_scope = "model"``, the default: global top-k as in Shi et al., 2019,
  "A Distributed Synchronous SGD Algorithm with Global Top-k Sparsification") or the
  ``ceil(fraction · n)`` largest of each tensor (at least one; ``"tensor"``), as
  indices (uint16 when the model has ≤ 65 536 float values, else int32) plus values
  (float32, or int8-quantised for ``topk+int8``). Biased, hence meant to be used with
  error feedback: :func:`ef21_step` (the default for top-k, see there) or the classic
  residual :func:`error_feedback_step`.

:func:`encode` returns numpy arrays (what travels in the ArrayRecord) plus a small
metadata dict; :func:`decode` inverts it given the same ``offsets`` (the server knows
them from the global model it sent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from fl_core.config import Section

SCHEMES = ("none", "int8", "int4", "topk", "topk+int8")
TOPK_SCOPES = ("model", "tensor")


class CompressionSection(Section):
    """Compression of every silo's model delta before upload (with error feedback)."""

    method: Literal["none", "int8", "int4", "topk", "topk+int8"] = Field(
        "none",
        description="Compress each silo's model delta before upload: stochastic 8/4-bit "
        "quantisation, top-k sparsification, or both.",
    )
    topk_fraction: float = Field(
        0.01, gt=0, le=1, description="Share of the float values top-k keeps per reply."
    )
    topk_scope: Literal["model", "tensor"] = Field(
        "model",
        description="Top-k picks the largest values of the whole update (model) or of "
        "each tensor (tensor).",
    )
    topk_feedback: Literal["ef21", "residual"] = Field(
        "ef21",
        description="Error feedback of top-k: EF21 (silo and server track each silo's "
        "update; top-k of the change is sent) or the classic residual.",
    )
    topk_warmup_rounds: int = Field(
        3,
        ge=0,
        description="Top-k only: the first rounds upload the dense delta with "
        "compression.topk-warmup-method instead (their bytes count in full); top-k and its "
        "error feedback start after them.",
    )
    topk_warmup_method: Literal["none", "int8", "int4"] = Field(
        "int4",
        description="What the top-k warm-up rounds upload: the dense delta as float32 "
        "(none) or stochastically quantised (int8, int4).",
    )
    error_feedback: bool = Field(
        True,
        description="Keep what compression dropped in the silo's state and add it to its "
        "next update.",
    )
    quantization_chunk: int = Field(
        1024, ge=0, description="Values sharing one quantisation scale (0 = one per tensor)."
    )

    def round_spec(self, server_round: int) -> tuple[CompressionSpec, bool]:
        """The codec of round ``server_round`` and whether it is a top-k warm-up round
        (rounds 1 … ``topk_warmup_rounds`` of a top-k method upload with
        ``topk_warmup_method``, dense; a round number ≤ 0, unknown, is never one)."""
        warmup = self.method.startswith("topk") and 1 <= server_round <= self.topk_warmup_rounds
        return (
            CompressionSpec(
                self.topk_warmup_method if warmup else self.method,
                self.topk_fraction,
                self.quantization_chunk,
                self.topk_scope,
            ),
            warmup,
        )


@dataclass(frozen=True)
class CompressionSpec:
    """What to do with an update: ``scheme`` (one of :data:`SCHEMES`), the top-k
    ``topk_fraction``, the quantisation ``chunk`` (elements per scale; 0 = one
    scale per tensor) and the ``topk_scope`` (``"model"``: the largest values of the
    whole update; ``"tensor"``: of each tensor)."""

    scheme: str = "none"
    topk_fraction: float = 0.01
    chunk: int = 1024
    topk_scope: str = "model"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(
                f"compression.method '{self.scheme}' is not one of: {', '.join(SCHEMES)}"
            )
        if not 0 < self.topk_fraction <= 1:
            raise ValueError(
                f"compression.topk-fraction must be in (0, 1], got {self.topk_fraction}"
            )
        if self.chunk < 0:
            raise ValueError(
                f"compression.quantization-chunk must be ≥ 0 (0 = per tensor), got {self.chunk}"
            )
        if self.topk_scope not in TOPK_SCOPES:
            raise ValueError(
                f"compression.topk-scope '{self.topk_scope}' is not one of: "
                f"{', '.join(TOPK_SCOPES)}"
            )

    @property
    def bits(self) -> int:
        """Bits per quantised value (0 = values stay float32)."""
        return {"int8": 8, "int4": 4, "topk+int8": 8}.get(self.scheme, 0)

    @property
    def sparse(self) -> bool:
        """True for the top-k schemes."""
        return self.scheme.startswith("topk")


# --------------------------------------------------------------------------- chunks
def chunk_ids(offsets: Sequence[int], chunk: int) -> tuple[torch.Tensor, int]:
    """For a vector split into segments at ``offsets``: the chunk id of every element
    (chunks of ``chunk`` elements restarting at every segment; 0 = one chunk per
    segment) and the number of chunks."""
    ids, base = [], 0
    for start, end in pairwise(offsets):
        n = end - start
        if n == 0:
            continue
        size = chunk if chunk > 0 else n
        ids.append(base + torch.arange(n, dtype=torch.int64) // size)
        base += math.ceil(n / size)
    if not ids:
        return torch.empty(0, dtype=torch.int64), 0
    return torch.cat(ids), base


# ----------------------------------------------------------------- quantisation
def quantize(
    x: torch.Tensor,
    bits: int,
    ids: torch.Tensor,
    num_chunks: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unbiased stochastic quantisation of ``x`` to ``2**bits`` levels per chunk.

    Returns ``(codes, lo, step)``: integer codes in ``[0, 2**bits - 1]`` (uint8, not
    packed) and each chunk's float32 minimum and level step; ``lo[c] + code · step[c]``
    decodes.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    x = x.to(torch.float32)
    levels = (1 << bits) - 1
    lo = torch.full((num_chunks,), math.inf).scatter_reduce(0, ids, x, "amin")
    hi = torch.full((num_chunks,), -math.inf).scatter_reduce(0, ids, x, "amax")
    step = (hi - lo) / levels
    step = torch.where(step > 0, step, torch.ones_like(step))  # constant chunk: codes 0
    scaled = ((x - lo[ids]) / step[ids]).clamp_(0, levels)
    floor = scaled.floor()
    up = torch.rand(x.shape, generator=generator) < (scaled - floor)
    codes = (floor + up).clamp_(0, levels).to(torch.uint8)
    return codes, lo, step


def dequantize(
    codes: torch.Tensor, lo: torch.Tensor, step: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """Inverse of :func:`quantize` (float32)."""
    return lo[ids] + codes.to(torch.float32) * step[ids]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte (low nibble first); odd lengths are padded with 0."""
    codes = codes.to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_zeros(1)])
    pairs = codes.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_nibbles(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: the first ``numel`` codes."""
    packed = packed.to(torch.uint8)
    out = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)
    return out[:numel]


# ------------------------------------------------------------------------- top-k
def topk_indices(
    x: torch.Tensor, offsets: Sequence[int], fraction: float, scope: str = "tensor"
) -> torch.Tensor:
    """Sorted indices (int64) of the ``max(1, ceil(fraction · n))`` largest ``|x|`` of
    every segment (``scope = "tensor"``) or of the ``max(1, ceil(fraction · d))``
    largest of the whole vector (``"model"``)."""
    if scope == "model":
        d = int(offsets[-1])
        if d == 0:
            return torch.empty(0, dtype=torch.int64)
        k = min(d, max(1, math.ceil(fraction * d)))
        return torch.sort(torch.topk(x[:d].abs(), k, sorted=False).indices).values
    picked = []
    for start, end in pairwise(offsets):
        n = end - start
        if n == 0:
            continue
        k = min(n, max(1, math.ceil(fraction * n)))
        top = torch.topk(x[start:end].abs(), k, sorted=False).indices
        picked.append(top + start)
    if not picked:
        return torch.empty(0, dtype=torch.int64)
    return torch.sort(torch.cat(picked)).values


def _index_dtype(d: int) -> np.dtype:
    return np.dtype(np.uint16) if d <= 1 << 16 else np.dtype(np.int32)


def _value_segments(indices: torch.Tensor, offsets: Sequence[int]) -> list[int]:
    """Offsets of each tensor's run inside the sorted top-k value vector."""
    bounds = torch.as_tensor(list(offsets), dtype=torch.int64)
    counts = torch.searchsorted(indices, bounds)
    return [int(c) for c in counts]


# ----------------------------------------------------------------- encode/decode
def encode(
    x: torch.Tensor, offsets: Sequence[int], spec: CompressionSpec, generator: torch.Generator
) -> tuple[dict[str, np.ndarray], dict[str, int | float | str]]:
    """Encode the flat update ``x`` (segments at ``offsets``) with ``spec``.

    Returns ``(arrays, meta)``: the numpy arrays that travel (``codes``, ``lo``,
    ``step``, ``indices``, ``values`` as the scheme needs) and the metadata
    :func:`decode` needs besides ``offsets``.
    """
    x = x.detach().to(torch.float32).reshape(-1)
    if x.numel() != offsets[-1]:
        raise ValueError(f"update has {x.numel()} values but offsets end at {offsets[-1]}")
    meta: dict[str, int | float | str] = {
        "scheme": spec.scheme,
        "chunk": spec.chunk,
        "numel": int(x.numel()),
    }
    arrays: dict[str, np.ndarray] = {}
    if spec.scheme == "none":
        arrays["values"] = x.numpy().copy()
        return arrays, meta
    values, value_offsets = x, list(offsets)
    if spec.sparse:
        idx = topk_indices(x, offsets, spec.topk_fraction, spec.topk_scope)
        arrays["indices"] = idx.numpy().astype(_index_dtype(x.numel()))
        values = x[idx]
        value_offsets = _value_segments(idx, offsets)
    if spec.bits == 0:
        arrays["values"] = values.numpy().copy()
        return arrays, meta
    ids, num_chunks = chunk_ids(value_offsets, spec.chunk)
    codes, lo, step = quantize(values, spec.bits, ids, num_chunks, generator)
    if spec.bits == 4:
        codes = pack_nibbles(codes)
    arrays["codes"] = codes.numpy()
    arrays["lo"] = lo.numpy()
    arrays["step"] = step.numpy()
    return arrays, meta


def decode(arrays: dict[str, np.ndarray], meta: dict, offsets: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`encode`: the (approximate) flat update as float32.

    Raises ``ValueError`` when the arrays do not fit ``meta`` and ``offsets``.
    """
    spec = CompressionSpec(str(meta["scheme"]), chunk=int(meta["chunk"]))
    d = int(offsets[-1])
    if int(meta.get("numel", d)) != d:
        raise ValueError(f"encoded update has {meta['numel']} values, the model has {d}")
    if spec.sparse:
        if "indices" not in arrays:
            raise ValueError("top-k update lacks 'indices'")
        idx = torch.from_numpy(np.asarray(arrays["indices"]).astype(np.int64))
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= d):
            raise ValueError(f"top-k indices outside 0..{d - 1}")
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise ValueError("top-k indices are not strictly increasing")
        n_values = idx.numel()
        value_offsets = _value_segments(idx, offsets)
    else:
        n_values, value_offsets = d, list(offsets)
    if spec.bits == 0:
        values = torch.from_numpy(np.asarray(arrays["values"], dtype=np.float32).reshape(-1))
    else:
        ids, num_chunks = chunk_ids(value_offsets, spec.chunk)
        codes = torch.from_numpy(np.asarray(arrays["codes"], dtype=np.uint8).reshape(-1))
        if spec.bits == 4:
            codes = unpack_nibbles(codes, n_values)
        lo = torch.from_numpy(np.asarray(arrays["lo"], dtype=np.float32).reshape(-1))
        step = torch.from_numpy(np.asarray(arrays["step"], dtype=np.float32).reshape(-1))
        if codes.numel() != n_values or lo.numel() != num_chunks or step.numel() != num_chunks:
            raise ValueError(
                f"quantised update has {codes.numel()} codes and {lo.numel()} scales; "
                f"expected {n_values} and {num_chunks}"
            )
        values = dequantize(codes, lo, step, ids)
    if values.numel() != n_values:
        raise ValueError(f"update carries {values.numel()} values, expected {n_values}")
    if not spec.sparse:
        return values.clone()
    out = torch.zeros(d, dtype=torch.float32)
    out[idx] = values
    return out


def error_feedback_step(
    update: torch.Tensor,
    residual: torch.Tensor | None,
    offsets: Sequence[int],
    spec: CompressionSpec,
    generator: torch.Generator,
) -> tuple[dict[str, np.ndarray], dict, torch.Tensor]:
    """One round of error feedback (Seide et al., 2014; Karimireddy et al., 2019):
    compress ``update + residual`` and keep what was not sent as the next residual.

    Returns ``(arrays, meta, new_residual)``; ``new_residual = corrected −
    decode(encode(corrected))``, so nothing is lost over rounds, only delayed.
    """
    corrected = update if residual is None else update + residual
    arrays, meta = encode(corrected, offsets, spec, generator)
    sent = decode(arrays, meta, offsets)
    return arrays, meta, corrected - sent


def ef21_step(
    update: torch.Tensor,
    estimate: torch.Tensor | None,
    offsets: Sequence[int],
    spec: CompressionSpec,
    generator: torch.Generator,
) -> tuple[dict[str, np.ndarray], dict, torch.Tensor]:
    """One round of EF21 (Richtárik, Sokolov & Fatkhullin, 2021, "EF21: A New, Simpler,
    Theoretically Better, and Practically Faster Error Feedback"): compress the
    DIFFERENCE between this round's update and the silo's running ``estimate`` of its
    update, and advance the estimate by what was sent.

    Returns ``(arrays, meta, new_estimate)`` with ``new_estimate = estimate +
    decode(arrays)``; the server holds the same estimate per silo
    (:func:`advance_estimate`, bit-identical) and aggregates it in place of the update.

    Why not the classic residual (:func:`error_feedback_step`) for top-k in FL: with
    several local epochs a silo re-learns a similar delta every round from a global
    model that barely moved, while its residual still holds the unsent part of the
    previous deltas, so the residual counts the same progress again and again (measured
    on digits: residual norm ~5× the update after a few rounds) and is released in
    overshooting bursts. EF21's estimate tracks the CURRENT update instead of summing
    past ones: ``‖update − new_estimate‖² ≤ (1 − k/d)·‖update − estimate‖²`` for top-k,
    and nothing is ever counted twice.
    """
    if estimate is None:
        estimate = torch.zeros_like(update, dtype=torch.float32)
    arrays, meta = encode(update - estimate, offsets, spec, generator)
    return arrays, meta, advance_estimate(estimate, decode(arrays, meta, offsets))


def advance_estimate(estimate: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
    """EF21's estimate update ``estimate + sent`` (float32), the one formula client and
    server both apply, so their copies stay bit-identical."""
    return estimate.to(torch.float32) + sent.to(torch.float32)


# ------------------------------------------------------------------------ payload
_MAGIC = b"FSC1"
_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "int32": np.int32, "float32": np.float32}


def pack_payload(
    arrays: dict[str, np.ndarray], meta: dict, *, entropy_coding: bool = True
) -> bytes:
    """One byte string holding ``meta`` and ``arrays`` (so the update travels as ONE
    Flower Array: every Array costs ~0.45 kB of object headers and ids on the wire).

    Layout: ``FSC1`` · flag byte (1 = body deflated with zlib) · uint32 header length ·
    JSON header (meta + name/dtype/length of each array) · body (the arrays' bytes).
    With ``entropy_coding`` the body is deflated (lossless) when that is smaller —
    quantisation codes of a bell-shaped update have well under 8 bits of entropy.
    """
    import json
    import zlib

    spec = [[name, str(a.dtype), int(a.size)] for name, a in arrays.items()]
    for _, dtype, _ in spec:
        if dtype not in _DTYPES:
            raise ValueError(f"cannot pack arrays of dtype {dtype}")
    header = json.dumps({"meta": meta, "arrays": spec}, separators=(",", ":")).encode()
    body = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())
    flag = 0
    if entropy_coding:
        packed = zlib.compress(body, 9)
        if len(packed) < len(body):
            body, flag = packed, 1
    return _MAGIC + bytes([flag]) + len(header).to_bytes(4, "little") + header + body


def unpack_payload(payload: bytes) -> tuple[dict[str, np.ndarray], dict]:
    """Inverse of :func:`pack_payload`; raises ``ValueError`` on a malformed payload."""
    import json
    import zlib

    if payload[:4] != _MAGIC or len(payload) < 9:
        raise ValueError("not a compressed-update payload (bad magic)")
    flag = payload[4]
    size = int.from_bytes(payload[5:9], "little")
    try:
        header = json.loads(payload[9 : 9 + size])
        body = payload[9 + size :]
        if flag == 1:
            body = zlib.decompress(body)
        arrays, start = {}, 0
        for name, dtype, n in header["arrays"]:
            width = np.dtype(_DTYPES[dtype]).itemsize * int(n)
            if start + width > len(body):
                raise ValueError(f"payload too short for array '{name}'")
            arrays[name] = np.frombuffer(body, _DTYPES[dtype], count=int(n), offset=start).copy()
            start += width
    except (KeyError, TypeError, json.JSONDecodeError, zlib.error) as exc:
        raise ValueError(f"malformed compressed-update payload: {exc}") from None
    if start != len(body):
        raise ValueError(f"payload has {len(body) - start} unexpected trailing bytes")
    return arrays, header["meta"]
